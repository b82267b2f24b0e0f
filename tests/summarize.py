"""Print one closing line for all test tiers from their JUnit XML files."""
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main(folder: str) -> int:
    totals = {"passed": 0, "failed": 0, "skipped": 0}
    tiers = []
    for f in sorted(Path(folder).glob("*.xml")):
        t = {"passed": 0, "failed": 0, "skipped": 0}
        for suite in ET.parse(f).getroot().iter("testsuite"):
            tests = int(suite.get("tests", 0))
            failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped = int(suite.get("skipped", 0))
            t["passed"] += tests - failed - skipped
            t["failed"] += failed
            t["skipped"] += skipped
        tiers.append(f"{f.stem}: {t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped")
        for k in totals:
            totals[k] += t[k]
    for line in tiers:
        print("  " + line)
    print(f"{totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "build/test-results"))
