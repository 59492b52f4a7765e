"""Experiments on the serving side: routing, shadows, feedback, the counts telemetry sends."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession

from edge_agent.errors import InferenceError
from edge_agent.experiments import Experiments, ExperimentSettings, shadow
from edge_agent.experiments.answers import Answer
from edge_agent.experiments.shadow import COMPARE_SLICE, ShadowRunner
from edge_agent.runtime import ModelRepository
from edge_agent.server import InferenceServer, ServerConfig
from edge_agent.server.answering import QUIET_S, Answering
from edge_protocol import ExperimentSpec, Pin
from tests.agent.conftest import eventually, infer_body, load, ort_outputs, post
from tests.support.models import BuiltModel, ModelSet

CANDIDATE = Pin(2, "b" * 64, 100)


def _spec(mode: str, split: int = 30) -> ExperimentSpec:
    return ExperimentSpec(7, "trial", mode, CANDIDATE, split if mode == "split" else 0)


@pytest.fixture
async def serving(
    repository: ModelRepository,
) -> AsyncIterator[tuple[InferenceServer, Experiments]]:
    experiments = Experiments(ExperimentSettings(answers_kept=1000, shadow_queue=4096))
    server = InferenceServer(repository, ServerConfig(port=0), experiments=experiments)
    await server.start()
    yield server, experiments
    await server.drain_and_stop()


async def _start(experiments: Experiments, model: BuiltModel, mode: str, split: int = 30) -> None:
    await experiments.start("classifier", 1, _spec(mode, split), load(model, version=2))


async def _infer(http: ClientSession, url: str, body: dict[str, Any], **kw: Any) -> Any:
    reply = await post(http, f"{url}/v2/models/classifier/infer", json=body, **kw)
    assert reply.status == 200, reply.body
    return reply.json()


async def test_a_split_routes_by_key_and_at_random_and_says_who_answered(
    serving: tuple[InferenceServer, Experiments],
    onnx_models: ModelSet,
    classifier_v2: BuiltModel,
    http: ClientSession,
) -> None:
    server, experiments = serving
    await _start(experiments, classifier_v2, "split", split=30)
    rows = onnx_models.classifier.X_eval[:1].astype(np.float32)
    body = infer_body(onnx_models.classifier, rows)

    answers = [await _infer(http, server.url, body) for _ in range(400)]
    share = sum(a["model_version"] == "2" for a in answers) / len(answers)
    # 400 draws of p = 0.3: the standard deviation is 0.023; five of them is the tolerance.
    assert 0.3 - 0.115 < share < 0.3 + 0.115
    for answer in answers:  # each answer is the version it names, computed on its model
        path = onnx_models.classifier if answer["model_version"] == "1" else classifier_v2
        expected = ort_outputs(path.onnx_path, {onnx_models.classifier.input_name: rows})
        assert answer["outputs"][0]["data"] == expected["label"].tolist()
        assert len(answer["id"]) == 32, "an experiment's answer always carries an id"

    by_key = {}
    for key in (f"user-{n}" for n in range(60)):
        keyed = {**body, "parameters": {"experiment_key": key}}
        first = (await _infer(http, server.url, keyed))["model_version"]
        again = await _infer(http, server.url, body, headers={"Experiment-Key": key})
        assert again["model_version"] == first, "a key always reaches the same variant"
        by_key[key] = first
    assert set(by_key.values()) == {"1", "2"}


async def test_feedback_is_matched_to_the_variant_that_answered_and_counted(
    serving: tuple[InferenceServer, Experiments],
    onnx_models: ModelSet,
    classifier_v2: BuiltModel,
    http: ClientSession,
) -> None:
    server, experiments = serving
    await _start(experiments, classifier_v2, "split", split=50)
    rows = onnx_models.classifier.X_eval[:2].astype(np.float32)
    body = infer_body(onnx_models.classifier, rows)
    answers = [await _infer(http, server.url, {**body, "id": f"r{n}"}) for n in range(40)]
    # The truth is what version 1 says: version 1 is always right, version 2 when it agrees.
    truth = ort_outputs(onnx_models.classifier.onnx_path, {"X": rows})["label"].tolist()
    items = [{"id": a["id"], "label": truth} for a in answers]
    items.append({"id": "never-answered", "label": 0})

    reply = await post(
        http, f"{server.url}/v2/models/classifier/feedback", json={"feedback": items}
    )

    assert reply.status == 200, reply.body
    results = reply.json()["results"]
    assert reply.json()["matched"] == 40
    assert results[-1] == {"id": "never-answered", "status": "unknown"}
    assert [r["version"] for r in results[:-1]] == [a["model_version"] for a in answers]
    counts = experiments.counters.drain()
    control = counts[("classifier", "1")]
    served_by_1 = sum(a["model_version"] == "1" for a in answers)
    assert control["answered"] == served_by_1
    assert control["feedback"]["labels"] == 2 * served_by_1
    assert control["feedback"]["correct"] == 2 * served_by_1
    treatment = counts[("classifier", "2")]
    assert treatment["feedback"]["labels"] == 2 * (40 - served_by_1)
    # Scored once: the same ids again are unknown.
    again = await post(http, f"{server.url}/v2/models/classifier/feedback", json=items[0])
    assert again.json()["results"] == [{"id": items[0]["id"], "status": "unknown"}]


async def test_a_regressors_feedback_and_shadow_count_absolute_errors_and_their_squares(
    serving: tuple[InferenceServer, Experiments], onnx_models: ModelSet, http: ClientSession
) -> None:
    server, experiments = serving
    regressor = onnx_models.regressor
    spec = ExperimentSpec(8, "fit", "split", CANDIDATE, 50)
    await experiments.start("regressor", 1, spec, load(regressor, version=2))
    rows = regressor.X_eval[:2].astype(np.float32)
    url = f"{server.url}/v2/models/regressor"
    answers = []
    for n in range(30):
        reply = await post(
            http, f"{url}/infer", json={**infer_body(regressor, rows), "id": f"v{n}"}
        )
        answers.append(reply.json())
    predicted = ort_outputs(regressor.onnx_path, {regressor.input_name: rows})["variable"]
    truth = [float(predicted[0][0]) + 0.5, float(predicted[1][0]) - 1.5]  # errors 0.5 and 1.5
    items = [{"id": a["id"], "value": truth} for a in answers]

    reply = await post(http, f"{url}/feedback", json={"feedback": items})

    assert reply.json()["matched"] == 30
    assert [r["abs_error"] for r in reply.json()["results"]] == [pytest.approx(1.0, abs=1e-5)] * 30
    counts = experiments.counters.drain()
    for version in ("1", "2"):
        answered = sum(a["model_version"] == version for a in answers)
        feedback = counts[("regressor", version)]["feedback"]
        assert feedback["values"] == 2 * answered
        assert feedback["abs_error_sum"] == pytest.approx(2.0 * answered, rel=1e-5)
        assert feedback["abs_error_sq_sum"] == pytest.approx(2.5 * answered, rel=1e-5)

    await experiments.start("regressor", 1, _spec("shadow"), load(regressor, version=2))
    for _ in range(5):
        await post(http, f"{url}/infer", json=infer_body(regressor, rows))
    totals: dict[str, float] = {"runs": 0, "values": 0, "abs_diff_sum": 0, "abs_diff_sq_sum": 0}

    def compared() -> bool:
        part = experiments.counters.drain().get(("regressor", "2"), {}).get("shadow", {})
        for key in totals:
            totals[key] += part.get(key, 0)
        return totals["runs"] == 5

    await eventually(compared, "the shadow compared every input")
    assert totals == {"runs": 5, "values": 10, "abs_diff_sum": 0.0, "abs_diff_sq_sum": 0.0}


async def test_a_shadow_never_answers_and_its_agreement_is_counted(
    serving: tuple[InferenceServer, Experiments],
    onnx_models: ModelSet,
    classifier_v2: BuiltModel,
    http: ClientSession,
) -> None:
    server, experiments = serving
    await _start(experiments, classifier_v2, "shadow")
    rows = onnx_models.classifier.X_eval[:3].astype(np.float32)
    expected = ort_outputs(onnx_models.classifier.onnx_path, {"X": rows})
    shadow = ort_outputs(classifier_v2.onnx_path, {"X": rows})
    narrow = infer_body(onnx_models.classifier, rows[:, :2])  # too few features: refused
    refused = await post(http, f"{server.url}/v2/models/classifier/infer", json=narrow)
    assert refused.status == 400, "and it must not leave the server looking busy forever"

    for _ in range(25):
        answer = await _infer(http, server.url, infer_body(onnx_models.classifier, rows))
        assert answer["model_version"] == "1"
        assert answer["outputs"][0]["data"] == expected["label"].tolist()
    versioned = await post(
        http, f"{server.url}/v2/models/classifier/versions/2/infer",
        json=infer_body(onnx_models.classifier, rows),
    )  # fmt: skip
    assert versioned.status == 404, "a shadow's version is never served"

    totals: dict[str, float] = {"runs": 0, "labels": 0, "agreed": 0}

    def drained() -> bool:
        part = experiments.counters.drain().get(("classifier", "2"), {}).get("shadow", {})
        for key in totals:
            totals[key] += part.get(key, 0)
        return totals["runs"] == 25

    await eventually(drained, "the shadow ran every input")
    agree = int((expected["label"] == shadow["label"]).sum())
    assert totals == {"runs": 25, "labels": 75, "agreed": 25 * agree}


async def test_a_full_shadow_queue_drops_and_counts(
    onnx_models: ModelSet, classifier_v2: BuiltModel
) -> None:
    experiments = Experiments()
    runner = ShadowRunner(load(classifier_v2, 2), experiments.counters, capacity=3)
    inputs = {"X": onnx_models.classifier.X_eval[:1].astype(np.float32)}
    control = Answer("classifier", 1, "label", (0,))
    for _ in range(10):  # before its thread starts: nothing is taken while they come
        runner.offer(inputs, control)
    assert runner.depth == 3
    runner.start()
    counted: dict[str, Any] = {"runs": 0, "dropped": 0}

    def all_run() -> bool:
        for key, counts in experiments.counters.drain().items():
            assert key == ("classifier", "2")
            for name in counted:
                counted[name] += counts["shadow"][name]
        return counted["runs"] == 3

    await eventually(all_run, "the shadow ran what it kept")
    await runner.close()
    assert counted == {"runs": 3, "dropped": 7}


async def _shadow_counts(experiments: Experiments, runner: ShadowRunner, runs: int) -> Any:
    """The shadow's runs, labels, agreed and failed counts, once it has run `runs` inputs;
    the runner is closed."""
    totals = {"runs": 0, "labels": 0, "agreed": 0, "failed": 0}

    def ran_them() -> bool:
        for key, counts in experiments.counters.drain().items():
            assert key == ("classifier", "2")
            for name in totals:
                totals[name] += counts["shadow"].get(name, 0)
        return totals["runs"] == runs

    await eventually(ran_them, f"the shadow ran {runs} inputs")
    await runner.close()
    return totals


async def test_the_shadow_stacks_what_it_gathered_into_few_runs_and_compares_each_input(
    onnx_models: ModelSet, classifier_v2: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiments = Experiments()
    model = load(classifier_v2, 2)
    rows_run: list[int] = []
    run = model.run
    monkeypatch.setattr(
        model, "run", lambda inputs: rows_run.append(len(inputs["X"])) or run(inputs)
    )
    runner = ShadowRunner(model, experiments.counters, capacity=200)
    features = onnx_models.classifier.X_eval[:60].astype(np.float32)
    mine = ort_outputs(classifier_v2.onnx_path, {"X": features})["label"].tolist()
    runner.start()
    for i in range(0, 60, 2):  # 30 requests of two rows, each "answered" with the shadow's own
        runner.offer({"X": features[i : i + 2]}, Answer("classifier", 1, "label", (mine[i], -1)))
    totals = await _shadow_counts(experiments, runner, 30)
    assert totals == {"runs": 30, "labels": 60, "agreed": 30, "failed": 0}
    assert sum(rows_run) == 60
    assert len(rows_run) < 30, f"stacked, not one run each: {rows_run}"


async def test_an_input_that_fails_the_shadow_does_not_cost_its_neighbours_their_comparison(
    onnx_models: ModelSet, classifier_v2: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiments = Experiments()
    model = load(classifier_v2, 2)
    run = model.run

    def refusing(inputs: dict[str, Any]) -> dict[str, Any]:
        if (inputs["X"] == 999).any():
            raise InferenceError("this input breaks the shadow")
        return run(inputs)

    monkeypatch.setattr(model, "run", refusing)
    runner = ShadowRunner(model, experiments.counters, capacity=100)
    features = onnx_models.classifier.X_eval[:10].astype(np.float32)
    mine = ort_outputs(classifier_v2.onnx_path, {"X": features})["label"].tolist()
    for i in range(10):  # queued before the worker starts: they share one stacked run
        row = features[i : i + 1].copy()
        if i == 4:
            row[:] = 999
        runner.offer({"X": row}, Answer("classifier", 1, "label", (mine[i],)))
    runner.start()
    totals = await _shadow_counts(experiments, runner, 10)
    assert totals == {"runs": 10, "labels": 9, "agreed": 9, "failed": 1}


async def test_the_shadow_waits_for_a_moment_without_requests_and_drops_meanwhile(
    onnx_models: ModelSet, classifier_v2: BuiltModel
) -> None:
    experiments = Experiments()
    answering = Answering()
    answering.begin()  # a request is being answered
    runner = ShadowRunner(
        load(classifier_v2, 2), experiments.counters, capacity=4, quiet=answering.quiet
    )
    runner.start()
    inputs = {"X": onnx_models.classifier.X_eval[:1].astype(np.float32)}
    for _ in range(10):
        runner.offer(inputs, None)
    await asyncio.sleep(0.2)  # four GATHER_S windows: a shadow that did not wait would have run
    assert runner.totals == {"ran": 0, "dropped": 6, "failed": 0}
    assert runner.depth == 4
    answering.end()
    await eventually(lambda: runner.totals["ran"] == 4, "the shadow ran once the server was idle")
    await runner.close()
    assert runner.totals == {"ran": 4, "dropped": 6, "failed": 0}


async def test_a_request_arriving_during_the_comparison_pauses_it_after_one_slice(
    onnx_models: ModelSet, classifier_v2: BuiltModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiments = Experiments()
    answering = Answering()
    compared: list[int] = []
    agreement = shadow._add_agreement

    def counted(counts: dict[str, float], kind: str, pairs: list[tuple[Any, Any]]) -> None:
        if not compared:
            answering.begin()  # a request arrives once the first input is compared
        compared.append(len(pairs))
        agreement(counts, kind, pairs)

    monkeypatch.setattr(shadow, "_add_agreement", counted)
    runner = ShadowRunner(
        load(classifier_v2, 2), experiments.counters, capacity=100, quiet=answering.quiet
    )
    features = onnx_models.classifier.X_eval[:40].astype(np.float32)
    for i in range(40):  # queued before the worker starts: one stacked run of 40 inputs
        runner.offer({"X": features[i : i + 1]}, Answer("classifier", 1, "label", (0,)))
    runner.start()
    await eventually(lambda: compared, "the comparison began")
    await asyncio.sleep(0.05)  # the request is still being answered
    assert len(compared) == COMPARE_SLICE, "the comparison paused after its first slice"
    assert runner.totals["ran"] == 0
    answering.end()
    await eventually(lambda: runner.totals["ran"] == 40, "the rest compared once it was answered")
    await runner.close()
    assert len(compared) == 40


async def test_the_server_counts_as_busy_while_answering_and_for_a_quiet_millisecond_after(
    serving: tuple[InferenceServer, Experiments], onnx_models: ModelSet, http: ClientSession
) -> None:
    server, _ = serving
    answering = server.dataplane.answering
    rows = onnx_models.classifier.X_eval[:1].astype(np.float32)
    seen: list[bool] = []
    original = server.dataplane.infer

    async def watched(*args: Any) -> Any:
        seen.append(answering.busy())
        return await original(*args)

    server.dataplane.infer = watched  # type: ignore[method-assign]
    await _infer(http, server.url, infer_body(onnx_models.classifier, rows))
    assert seen == [True], "busy while a request is being answered"
    await asyncio.sleep(QUIET_S * 2)
    assert not answering.busy(), "quiet once nothing was answered for QUIET_S"
    answering.begin()
    answering.end()
    assert answering.busy(), "an answer just given: not quiet yet"
    await asyncio.sleep(QUIET_S * 2)
    assert not answering.busy()


async def test_a_wait_for_quiet_ends_a_quiet_time_after_the_last_answer_not_before() -> None:
    loop = asyncio.get_running_loop()
    answering = Answering(quiet_s=0.05)
    answering.begin()
    waiting = asyncio.create_task(answering.quiet())
    await asyncio.sleep(0.1)
    assert not waiting.done(), "no quiet moment while a request is being answered"
    answering.end()
    await asyncio.sleep(0.02)
    answering.begin()  # the next request, inside the quiet time: the moment is gone
    await asyncio.sleep(0.1)
    assert not waiting.done()
    answering.end()
    last_answer = loop.time()
    await asyncio.wait_for(waiting, timeout=10)
    assert loop.time() - last_answer >= 0.05, "a whole quiet time after the last answer"
    assert not answering.busy()
    await answering.quiet()  # already quiet: at once


async def test_the_shadow_runs_at_the_lowest_priority_so_answers_go_first(
    onnx_models: ModelSet, classifier_v2: BuiltModel
) -> None:

    experiments = Experiments()
    runner = ShadowRunner(load(classifier_v2, 2), experiments.counters, capacity=3)
    runner.start()
    runner.offer({"X": onnx_models.classifier.X_eval[:1].astype(np.float32)}, None)
    await eventually(experiments.counters.drain, "the shadow ran the input")
    workers = [t for t in threading.enumerate() if t.name.startswith("shadow-classifier")]
    policies = [os.sched_getscheduler(t.native_id or 0) for t in workers]
    served = os.sched_getscheduler(threading.get_native_id())
    await runner.close()
    assert policies == [os.SCHED_IDLE], "the shadow's own thread yields to every answer"
    assert served == os.SCHED_OTHER, "the serving threads keep their priority"


HOSTILE: list[tuple[Any, str]] = [
    ([1, 2], "must be a JSON object"),
    ({"feedback": "x"}, "'feedback' must be an array"),
    ({"feedback": []}, "'feedback' must be an array"),
    ({"feedback": [{"id": "a", "label": 1}] * 1001}, "1 to 1000 items"),
    ({"feedback": [5]}, r"feedback\[0\] must be an object"),
    ({"id": "a"}, "exactly one of 'label' and 'value'"),
    ({"id": "a", "label": 1, "value": 2.0}, "exactly one"),
    ({"id": "", "label": 1}, r"feedback\[0\]\.id"),
    ({"id": 7, "label": 1}, r"feedback\[0\]\.id"),
    ({"id": "a", "label": True}, "a label is an integer or a string"),
    ({"id": "a", "label": [1, None]}, r"label\[1\]: a label"),
    ({"id": "a", "label": 2**70}, "does not fit 64 bits"),
    ({"id": "a", "value": "NaN"}, "a value is a finite number"),
    ({"id": "a", "label": list(range(65))}, "1 to 64 rows"),
    ({"id": "a", "label": 1, "extra": 1}, "unknown field 'extra'"),
    ({"feedback": [], "more": 1}, "unknown field 'more'"),
]


@pytest.mark.parametrize(("body", "message"), HOSTILE)
async def test_hostile_feedback_is_a_400_naming_the_problem(
    serving: tuple[InferenceServer, Experiments],
    classifier_v2: BuiltModel,
    http: ClientSession,
    body: Any,
    message: str,
) -> None:
    server, experiments = serving
    await _start(experiments, classifier_v2, "split")
    reply = await post(http, f"{server.url}/v2/models/classifier/feedback", json=body)
    assert reply.status == 400
    assert reply.json()["error"]
    import re

    assert re.search(message, reply.json()["error"]), reply.json()


async def test_feedback_without_an_experiment_and_bad_keys_are_client_errors(
    serving: tuple[InferenceServer, Experiments], onnx_models: ModelSet, http: ClientSession
) -> None:
    server, _ = serving
    url = f"{server.url}/v2/models/classifier"
    not_json = await post(http, f"{url}/feedback", data=b"{nope")
    assert not_json.status == 400
    none = await post(http, f"{url}/feedback", json={"id": "a", "label": 1})
    assert none.status == 404
    assert "not in an experiment" in none.json()["error"]
    body = infer_body(onnx_models.classifier, onnx_models.classifier.X_eval[:1])
    long_key = await post(http, f"{url}/infer", json=body, headers={"Experiment-Key": "k" * 300})
    assert long_key.status == 400
    bad = await post(http, f"{url}/infer", json={**body, "parameters": {"experiment_key": 5}})
    assert bad.status == 400
    assert "parameters.experiment_key" in bad.json()["error"]
    plain = await post(http, f"{url}/infer", json=body)
    assert "id" not in plain.json(), "outside an experiment no id is made up"


def test_the_counts_go_to_telemetry_as_the_experiment_field_of_each_version() -> None:
    from pathlib import Path

    from edge_agent.metrics import AgentMetrics
    from edge_agent.uplink.telemetry import TelemetryCollector

    experiments, metrics = Experiments(), AgentMetrics()
    collector = TelemetryCollector(metrics, Path("/"))
    collector.version_details.append(experiments.counters.report)
    experiments.counters.update("classifier", 1, answered=2, feedback_labels=2, feedback_correct=1)
    experiments.counters.update("classifier", 2, shadow_runs=3, shadow_dropped=1)
    collector.on_request("classifier", "1", 200, 0.001)

    versions = collector.snapshot()["models"]["classifier"]["versions"]

    assert versions["1"]["requests"] == 1
    assert versions["1"]["experiment"]["answered"] == 2
    assert versions["1"]["experiment"]["feedback"] == {
        "labels": 2, "correct": 1, "values": 0, "abs_error_sum": 0.0, "abs_error_sq_sum": 0.0,
    }  # fmt: skip
    assert versions["2"]["requests"] == 0, "a shadow answers nothing"
    assert versions["2"]["experiment"]["shadow"]["dropped"] == 1
    assert collector.snapshot()["models"] == {}, "drained at each report"


def test_grpc_requests_carry_the_experiment_key_as_a_parameter() -> None:
    from edge_agent.errors import InvalidRequestError
    from edge_agent.server.grpc import inference_pb2 as pb
    from edge_agent.server.grpc.codec import decode_request

    def request(**key: Any) -> Any:
        message = pb.ModelInferRequest(model_name="classifier")
        tensor = message.inputs.add(name="X", datatype="FP32", shape=[1, 1])
        tensor.contents.fp32_contents.append(0.5)
        for name, value in key.items():
            message.parameters[name].CopyFrom(pb.InferParameter(**value))
        return message

    assert decode_request(request()).routing_key is None
    keyed = request(experiment_key={"string_param": "customer-7"})
    assert decode_request(keyed).routing_key == "customer-7"
    with pytest.raises(InvalidRequestError, match=r"parameters\.experiment_key"):
        decode_request(request(experiment_key={"int64_param": 7}))
