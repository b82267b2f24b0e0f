-- kube-lvs's Argo CD health checks begin with this (generate.py puts it
-- before each kind's part): no status yet, or a generation the operator has
-- not seen, is Progressing; past it `cond` maps each condition's type to it.
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
