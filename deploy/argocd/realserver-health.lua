-- Argo CD health for lvs.kube-lvs.io/RealServer: follows the health column.
local hs = {}
local health = obj.status and obj.status.health or nil
if health == "Healthy" then
  hs.status = "Healthy"
  hs.message = "Passing health checks"
elseif health == "Unhealthy" then
  hs.status = "Degraded"
  hs.message = "Failing health checks: weight set to 0 on the directors"
elseif health == "Draining" then
  hs.status = "Suspended"
  hs.message = "Weight 0: draining, no new connections"
else
  hs.status = "Progressing"
  hs.message = "Not checked yet"
end
if obj.status and obj.status.conditions then
  for _, c in ipairs(obj.status.conditions) do
    if c.status == "False" and (c.type == "Ready" or c.type == "Valid") and c.reason == "Invalid" then
      hs.status = "Degraded"
      hs.message = c.message or c.reason
    end
  end
end
return hs
