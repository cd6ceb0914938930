"""The model side of `dami serve`: transformers' ModelManager serving one already loaded pair under one name."""
from __future__ import annotations

import json

from fastapi import HTTPException
from transformers.cli.serving.model_manager import ModelManager

from dami_kernels.serving.versions import model_manager_kwargs


class PairModelManager(ModelManager):
    """Serves exactly one model, the pair loaded by `dami_kernels.hf.load_pair`, as `model_id`.

    Requests may name it or leave `model` out; any other name is answered with HTTP 400 by transformers'
    handlers (the manager is pinned to it). Nothing is loaded from the Hub, nothing is unloaded on idle.
    """

    def __init__(self, model, tokenizer, model_id: str, device: str = "auto"):
        super().__init__(device=str(device), model_timeout=-1, **model_manager_kwargs())
        self.model, self.tokenizer = model, tokenizer
        self.force_model = model_id  # pinned: transformers' handlers refuse other names

    @staticmethod
    def process_model_name(model_id: str) -> str:
        return model_id

    def load_model_and_processor(self, model_id_and_revision: str, progress_callback=None, tqdm_class=None,
                                 gguf_file=None):
        if model_id_and_revision != self.force_model or gguf_file is not None:
            raise HTTPException(status_code=400, detail=f"model: this server serves {self.force_model!r} only")
        return self.model, self.tokenizer

    async def load_model_streaming(self, model_id_and_revision: str, gguf_file=None):
        """/load_model: the one pair is always loaded; any other model is refused (one SSE error event)."""
        if model_id_and_revision == self.force_model and gguf_file is None:
            yield f'data: {json.dumps({"status": "ready", "model": self.force_model})}\n\n'
        else:
            message = f"this server serves {self.force_model!r} only"
            yield f'data: {json.dumps({"status": "error", "model": model_id_and_revision, "message": message})}\n\n'

    def list_models(self, cache_dir: str | None = None) -> list[dict]:
        """/v1/models: the one pair (5.24 asks `list_models`, 5.17 `get_gen_models`)."""
        return [{"id": self.force_model, "object": "model", "created": 0, "owned_by": "dami",
                 "status": {"value": "loaded"}}]

    def get_gen_models(self, cache_dir: str | None = None) -> list[dict]:
        return self.list_models(cache_dir)

    def shutdown(self) -> None:
        """The pair stays loaded for the life of the server (transformers' /reset would unload models)."""
