"""Distillation: the large tier's logged answers teach the small model through a LoRA adapter.

``log`` (the service's writer of teacher data) and ``adapter`` (the folder the service serves)
are the parts the server imports. The rest (``examples``, ``train``, ``adapter_gguf``,
``evaluate``, ``command``) is the offline ``smallfirst distill`` command; its training packages
come from the ``distill`` extra and are imported only when it runs.
"""
