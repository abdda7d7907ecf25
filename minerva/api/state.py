"""What the routes share, hung off the app by create_app, and the typed accessor routes read it through."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from minerva.dialects.openai_responses.store import ResponseStore
from minerva.engine.pool import EnginePool
from minerva.finetune.gguf_lora import write_lora_gguf
from minerva.finetune.metrics import FineTuningCollector
from minerva.finetune.runner import FineTunedModel, JobRunner
from minerva.finetune.store import DB_NAME, FineTuneStore
from minerva.metrics import ServerMetrics
from minerva.registry import ModelRegistry, register_fine_tuned
from minerva.settings import Settings


@dataclass
class ServerState:
    """Settings, the registry, the loaded engines and this server's metrics."""

    settings: Settings
    registry: ModelRegistry
    pool: EnginePool
    metrics: ServerMetrics = field(init=False)
    models_body: tuple[object, bytes] | None = None  # /v1/models JSON, keyed by registry version and loaded set
    responses_store: ResponseStore = field(init=False)  # stored /v1/responses objects
    finetune_trainer: str | None = None  # "module:function" the job worker trains with (tests pass a fake)
    _fine_tuning: JobRunner | None = field(default=None, init=False)
    _fine_tuning_metrics: FineTuningCollector | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.metrics = ServerMetrics(self.pool)  # one registry per app, never the global one
        self.responses_store = ResponseStore(self.settings.responses_store_size)

    def fine_tuning(self) -> JobRunner:
        """The fine-tuning job runner, opened on first use (its store under settings.data_dir); in the event loop."""
        if self._fine_tuning is None:
            def publish(model: FineTunedModel) -> None:
                register_fine_tuned(self.registry, model.model_id, model.base_id, model.adapter_path)

            runner = JobRunner(FineTuneStore(self.settings.data_dir), publish=publish, lora_gguf=write_lora_gguf,
                               threads=self.settings.finetune_threads,
                               **({"trainer": self.finetune_trainer} if self.finetune_trainer else {}))
            self._fine_tuning_metrics = FineTuningCollector(runner.store)
            self.metrics.registry.register(self._fine_tuning_metrics)
            runner.start()
            self._fine_tuning = runner
        return self._fine_tuning

    def has_fine_tuning_data(self) -> bool:
        """Whether a fine-tuning store exists already (so jobs must be recovered and models republished at start)."""
        return (self.settings.data_dir / DB_NAME).exists()

    async def close_fine_tuning(self) -> None:
        """Stop the job runner, if it was opened."""
        if self._fine_tuning is not None:
            await self._fine_tuning.close()
            self.metrics.registry.unregister(self._fine_tuning_metrics)
            self._fine_tuning.store.close()
            self._fine_tuning = self._fine_tuning_metrics = None


def server_state(request: Request) -> ServerState:
    """The state of the app serving this request."""
    return request.app.state.minerva
