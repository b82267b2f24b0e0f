-- Argo CD health for lvs.kube-lvs.io/RealServer (after common.lua).
-- Healthy: Ready (passing health checks) with its node side configured.
-- Suspended: Draining (weight 0, no new connections).
-- Degraded: Ready=False for a reason someone must fix, failing health checks
-- included, or BackendConfigured=False (the FIX tables: the operator's
-- RS_READY_FIX and RS_BACKEND_FIX, tested to match).
-- Progressing: no status yet, an unseen generation, or not checked yet.
local FIX = {
  VirtualServiceNotFound = true, VirtualServiceInvalid = true, Invalid = true, Duplicate = true,
  AddressNotAllowed = true, NodeNotAllowed = true, NodeAddressNotAllowed = true, NoPool = true,
  Conflict = true, Unhealthy = true,
}
local BACKEND_FIX = { NoNodeName = true, NodeNotFound = true }
local ready = cond["Ready"]
local backend = cond["BackendConfigured"]
if ready ~= nil and ready.status == "False" and FIX[ready.reason or ""] then
  hs.status = "Degraded"
  hs.message = (ready.reason or "") .. ": " .. (ready.message or "")
elseif backend ~= nil and backend.status == "False" and BACKEND_FIX[backend.reason or ""] then
  hs.status = "Degraded"
  hs.message = (backend.reason or "") .. ": " .. (backend.message or "")
elseif ready ~= nil and ready.status == "False" and ready.reason == "Draining" then
  hs.status = "Suspended"
  hs.message = ready.message or "Weight 0: draining, no new connections"
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Passing health checks"
else
  hs.status = "Progressing"
  hs.message = (ready and ready.message) or "Not checked yet"
end
return hs
