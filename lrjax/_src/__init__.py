"""lrjax's implementation: private. The public API is ``lrjax`` itself and the
public modules ``lrjax.models``, ``lrjax.recipes``, ``lrjax.hooks`` and
``lrjax.distributed``; nothing here is a stable import path."""
