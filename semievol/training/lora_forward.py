"""One LoRA projection's training forward as two small products and one fused add.

PEFT computes `result + lora_B(lora_A(dropout(x))) * scaling`: the scaling multiplies, and
the sum re-reads, a (tokens x out_features) tensor in the forward, and the backward
multiplies its gradient again, three passes over the largest tensors of the layer that do
no arithmetic to speak of. Here the scaling goes on B's (out_features x r) weight and the
add is one in-place `addmm_` on the base layer's output: result += h @ (scaling * B)^T, the
same sum (up to floating-point rounding order), with gradients through both the adapter and
the input. Fpb batch 8 on the 2-core Zen 3 EPYC, with bit_dropout: ~4.9 s a step with
PEFT's forward and dropout, ~3.9 with both changes (bench/results/amd-epyc-25-1/).
"""

from __future__ import annotations

import types


def fuse_lora_forward(peft_model) -> int:
    """Give every plain LoRA linear layer of `peft_model` (one adapter, no DoRA or other
    variant) the fused forward; returns how many layers got it. For training only: the model
    is not saved with it (save_pretrained writes weights, not methods)."""
    from peft.tuners.lora.layer import Linear

    fused = 0
    for module in peft_model.modules():
        if (isinstance(module, Linear) and len(module.lora_A) == 1
                and not getattr(module, "lora_variant", None)
                and not any(getattr(module, "use_dora", {}).values())):
            module.forward = types.MethodType(_fused_forward, module)
            fused += 1
    return fused


def _fused_forward(self, x, *args, **kwargs):
    adapters = [a for a in self.active_adapters if a in self.lora_A]
    if (self.disable_adapters or self.merged or len(adapters) != 1 or args or kwargs
            or x.shape[-1] != self.lora_A[adapters[0]].in_features):
        return type(self).forward(self, x, *args, **kwargs)  # anything unusual: PEFT's own
    name = adapters[0]
    # The base product on the flattened tokens, so that its (tokens, out) result is no view
    # and takes the adapter's product in place: a linear keeps its input, not its output,
    # for the backward. (An out-of-place addmm first copies all of the result, 11 % of a
    # profiled step; addmm_ on a view of it copies it again in the backward.)
    result = self.base_layer(x.reshape(-1, x.shape[-1]))
    lora_a = self.lora_A[name]
    # Dropout on `x` itself: SharedInputDropout shares one mask per input tensor object.
    h = lora_a(self.lora_dropout[name](x.to(lora_a.weight.dtype)))           # (..., r)
    b = self.lora_B[name].weight * self.scaling[name]                        # (out, r)
    result.addmm_(h.reshape(-1, h.shape[-1]).to(result.dtype), b.t().to(result.dtype))
    return result.view(*x.shape[:-1], result.shape[-1])
