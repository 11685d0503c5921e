"""Distillation: the large tier's logged answers teach the small model through a LoRA adapter.

``log`` is the service's writer of teacher data and the only part the server imports. The rest
(``examples``, ``train``, ``adapter_gguf``, ``evaluate``, ``command``) is the offline
``smallfirst distill`` command; its training packages come from the ``distill`` extra.
"""
