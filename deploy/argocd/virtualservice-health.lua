-- Argo CD health for lvs.kube-lvs.io/VirtualService (after common.lua).
-- Healthy: Ready. Degraded: a Conflict, or Ready=False for a reason someone
-- must fix (the FIX table: the operator's VS_READY_FIX, tested to match).
-- Progressing: no status yet, a generation the operator has not seen, or
-- directors still programming it (Pending).
local FIX = {
  Invalid = true, NoPool = true, Conflict = true, DirectorsNotAllowed = true, NoDirectors = true,
  Failed = true, NoRealServers = true, NoHealthyRealServers = true,
}
local conflict = cond["Conflict"]
if conflict ~= nil and conflict.status == "True" then
  hs.status = "Degraded"
  hs.message = conflict.message or "Another VirtualService declares this service"
  return hs
end
local ready = cond["Ready"]
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
elseif ready ~= nil and ready.status == "False" and FIX[ready.reason or ""] then
  hs.status = "Degraded"
  hs.message = (ready.reason or "") .. ": " .. (ready.message or "")
else
  hs.status = "Progressing"
  hs.message = (ready and ready.message) or "Programming directors"
end
return hs
