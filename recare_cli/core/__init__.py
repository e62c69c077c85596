"""Pure math on arrays, tensors and modules. No paths, no printing, no from_pretrained."""
