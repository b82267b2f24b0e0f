-- Argo CD health for lvs.kube-lvs.io/VirtualService.
-- Degraded: a Conflict, or Ready=False for a reason the user must fix.
-- Progressing: not yet observed at this generation, or directors still applying.
local hs = {}
if obj.status == nil or obj.status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kube-lvs operator"
  return hs
end
local gen = obj.metadata.generation
if gen ~= nil and obj.status.observedGeneration ~= nil and obj.status.observedGeneration < gen then
  hs.status = "Progressing"
  hs.message = "The operator has not seen generation " .. gen .. " yet"
  return hs
end
local cond = {}
for _, c in ipairs(obj.status.conditions) do
  cond[c.type] = c
end
if cond["Conflict"] ~= nil and cond["Conflict"].status == "True" then
  hs.status = "Degraded"
  hs.message = cond["Conflict"].message or "VIP conflict"
  return hs
end
local ready = cond["Ready"]
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end
local fatal = { Invalid = true, PoolDenied = true, NoPool = true, Conflict = true, NoDirectors = true }
for _, c in ipairs(obj.status.conditions) do
  if c.status == "False" and fatal[c.reason or ""] then
    hs.status = "Degraded"
    hs.message = c.message or c.reason
    return hs
  end
end
hs.status = "Progressing"
hs.message = (ready and ready.message) or "Programming directors"
return hs
