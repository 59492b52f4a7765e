"""The experiments running on this device, one per model at most, as the server sees them.

The control is the model the repository serves; the candidate is held here. A split sends
`split_percent` of the requests to the candidate (the treatment); a shadow runs the candidate
on every input after the control answered. Starting and stopping is the update path's job;
routing, remembering answers and scoring feedback happen here, for the server.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import threading
from collections.abc import Mapping
from typing import Any

from edge_agent.errors import ModelNotFoundError, ModelNotReadyError
from edge_agent.experiments.answers import AnswerMemory, output_kind, read_answer
from edge_agent.experiments.counters import ExperimentCounters, VariantCounts
from edge_agent.experiments.feedback import FeedbackItem, score
from edge_agent.experiments.routing import to_treatment
from edge_agent.experiments.settings import ExperimentSettings
from edge_agent.experiments.shadow import ServingActivity, ShadowRunner
from edge_agent.runtime.model import Array, LoadedModel
from edge_protocol import ExperimentSpec

log = logging.getLogger(__name__)


class ActiveExperiment:
    """One running experiment: its signed description, the candidate, the shadow worker."""

    def __init__(
        self,
        model: str,
        control_version: int,
        spec: ExperimentSpec,
        candidate: LoadedModel,
        shadow: ShadowRunner | None,
        *,
        counters: ExperimentCounters,
    ) -> None:
        self.model = model
        self.control_version = control_version
        self.spec = spec
        self.candidate = candidate
        self.shadow = shadow
        self._counters = counters
        # Per version that answered: its counts, and the (kind, output name) its answers are
        # read from; found on its first answer, so that the next ones look up nothing else.
        self._counts: dict[int, VariantCounts] = {}
        self._answer_outputs: dict[int, tuple[str, str] | None] = {}

    def counts(self, version: int) -> VariantCounts:
        """The counts of the variant `version` of this experiment's model."""
        counts = self._counts.get(version)
        if counts is None:
            counts = self._counts[version] = self._counters.variant(self.model, version)
        return counts

    def end_counts(self) -> None:
        """The experiment ended: its variants' counts go out with the next report, then end."""
        for version in {self.control_version, self.candidate.version, *self._counts}:
            self._counters.end(self.model, version)

    def answer_output(self, model: LoadedModel) -> tuple[str, str] | None:
        """(kind, name) of the output of `model` that feedback is scored against."""
        try:
            return self._answer_outputs[model.version]
        except KeyError:
            found = self._answer_outputs[model.version] = output_kind(model.io)
            return found

    @property
    def is_split(self) -> bool:
        """Whether the candidate answers requests (a treatment), rather than shadows them."""
        return self.spec.mode == "split"

    def describe(self) -> dict[str, Any]:
        """The experiment in `GET /v1/status`."""
        body: dict[str, Any] = {
            "id": self.spec.experiment_id,
            "name": self.spec.name,
            "mode": self.spec.mode,
            "control": self.control_version,
            "treatment" if self.is_split else "shadow": self.candidate.version,
        }
        if self.is_split:
            body["split_percent"] = self.spec.split_percent
        else:
            body["shadow_queue"] = 0 if self.shadow is None else self.shadow.depth
            totals = {} if self.shadow is None else self.shadow.totals
            body.update({f"shadow_{k}": v for k, v in totals.items()})
        return body


class RequestIds:
    """The ids the agent gives answers that came without one: 32 hex digits, a random half
    drawn once per run and a counter, so ids never repeat within a run nor across runs
    (a fresh uuid4 per request cost more than the rest of the experiment's bookkeeping)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def next(self) -> str:
        """The next id."""
        return f"{self._prefix}{next(self._counter):016x}"


class Experiments:
    """Every experiment of the device, the answers feedback is matched with, their counts."""

    def __init__(self, settings: ExperimentSettings | None = None) -> None:
        self.settings = settings or ExperimentSettings()
        self.counters = ExperimentCounters()
        self.answers = AnswerMemory(self.settings.answers_kept)
        self._active: dict[str, ActiveExperiment] = {}
        self._lock = threading.Lock()
        self._rng = random.Random()  # noqa: S311 - a traffic split, not a secret
        self._ids = RequestIds()
        self._serving: ServingActivity | None = None

    def watch_serving(self, serving: ServingActivity) -> None:
        """Learn from the server when requests are being answered: a shadow runs only in
        the quiet moments between them."""
        self._serving = serving

    async def _until_quiet(self) -> None:
        if self._serving is not None:  # looked up each time: the server may watch after a start
            await self._serving.quiet()

    def get(self, model: str) -> ActiveExperiment | None:
        """The experiment running on `model`, if any."""
        # Without the lock: one dict lookup is atomic, and every request makes two of them.
        return self._active.get(model)

    def snapshot(self) -> list[ActiveExperiment]:
        """The running experiments, by model name."""
        with self._lock:
            return [self._active[name] for name in sorted(self._active)]

    async def start(
        self, model: str, control_version: int, spec: ExperimentSpec, candidate: LoadedModel
    ) -> None:
        """Run `spec` on `model` with `candidate` loaded, warmed up and self-tested; an earlier
        experiment on the model ends first."""
        await self.stop(model)
        shadow = None
        if spec.mode == "shadow":
            shadow = ShadowRunner(
                candidate, self.counters, self.settings.shadow_queue, quiet=self._until_quiet
            )
            shadow.start()
        experiment = ActiveExperiment(
            model, control_version, spec, candidate, shadow, counters=self.counters
        )
        with self._lock:
            self._active[model] = experiment
        log.info("model %s: experiment %r started (%s)", model, spec.name, experiment.describe())

    async def stop(self, model: str) -> ActiveExperiment | None:
        """End the experiment on `model`: the control answers everything again."""
        with self._lock:
            experiment = self._active.pop(model, None)
        if experiment is None:
            return None
        if experiment.shadow is not None:
            await experiment.shadow.close()
        experiment.candidate.retire()  # requests already on it finish, then it is released
        experiment.end_counts()
        self.answers.forget_model(model)
        log.info("model %s: experiment %r stopped", model, experiment.spec.name)
        return experiment

    async def close(self) -> None:
        """Stop every experiment (at shutdown)."""
        for experiment in self.snapshot():
            await self.stop(experiment.model)

    def treatment(self, model: str, version: str | None, key: str | None) -> LoadedModel | None:
        """The treatment, acquired for one request (the caller releases it), when it is to
        answer; None: the control does.

        A request naming a version gets that version: the treatment's is served here, any
        other goes to the repository (which answers for the control or refuses).
        """
        experiment = self.get(model)
        if experiment is None or not experiment.is_split:
            return None
        spec = experiment.spec
        if version is None:
            if not to_treatment(spec.experiment_id, spec.split_percent, key, self._rng):
                return None
        elif version != str(experiment.candidate.version):
            return None
        chosen = experiment.candidate
        try:
            chosen.acquire()
        except ModelNotReadyError as e:  # retired between the lookup and now: the experiment ended
            raise ModelNotFoundError(
                f"model {model!r} version {version} is no longer served"
            ) from e
        return chosen

    def answered(
        self,
        model: LoadedModel,
        given_id: str | None,
        inputs: Mapping[str, Array],
        outputs: Mapping[str, Array],
    ) -> str | None:
        """After an answer: count it, remember it for feedback, hand the inputs to a shadow.
        Returns the id the answer carries: the client's, or a fresh one while the model is in
        an experiment (feedback names it), or None."""
        experiment = self.get(model.name)
        if experiment is None:
            return given_id
        request_id = self._ids.next() if given_id is None else given_id
        experiment.counts(model.version).answered += 1
        found = experiment.answer_output(model)
        answer = None
        if found is not None and found[1] in outputs:
            answer = read_answer(model.name, model.version, found[0], outputs[found[1]])
            self.answers.remember(request_id, answer)
        if experiment.shadow is not None and model.version == experiment.control_version:
            experiment.shadow.offer(inputs, answer)
        return request_id

    def feedback(self, model: str, items: list[FeedbackItem]) -> list[dict[str, Any]]:
        """Score each item against the answer of its request id; one result per item."""
        if self.get(model) is None:
            raise ModelNotFoundError(
                f"model {model!r} is not in an experiment: answers are kept, and feedback "
                "matched, only while one runs (GET /v1/status lists them)"
            )
        results = []
        for item in items:
            answer = self.answers.take(model, item.request_id)
            result, increments = score(item, answer)
            if answer is not None and increments:
                self.counters.update(model, answer.version, **increments)
            results.append(result)
        return results

    def status(self) -> dict[str, Any]:
        """The `experiments` part of `GET /v1/status`."""
        return {
            "experiments": [e.describe() for e in self.snapshot()],
            "experiment_answers": {
                "kept": len(self.answers),
                "capacity": self.answers.capacity,
                "forgotten": self.answers.forgotten,
            },
        }
