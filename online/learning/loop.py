"""The learning loop: batches from an event source into one or several learners, written once.

Every learning unit (`online.learning.unit.LearningUnit`) runs this loop over its
`online.sources.EventSource`: the daemon's, replay's (learn, evaluate) and serve's; only the sinks differ.
For each batch it decodes raw records (orjson; an undecodable record is rejected with the
reason), hands the events to every model in order (River's progressive validation: each model
predicts, is scored, then learns, as `river.evaluate.progressive_val_score` does for it alone),
sends rejected records to the dead-letter sink (`online.dead_letters.DeadLetterRecord`, through
the daemon's Kafka outputs or replay's errors file; serve's answers), the named model's predictions to the
predictions sink, advances the source positions and counts the events in the unit's
`online.checkpoints.persistence.Checkpointer`. When a checkpoint is due is the caller's question.

Mini-batch learning (``model.batch.size`` = N): the loop cuts the stream into chunks of exactly
N records in source order, across batches and partitions, and processes a chunk only once it is
complete; records of an incomplete chunk are held and their partitions' positions stay before
them. A checkpoint therefore always falls on a chunk boundary (never inside a chunk), and a
restart re-reads the held records into the same chunk: the result equals one uninterrupted run
(kill -9 included). `flush` processes the incomplete last chunk (end of the inputs, a stop).

>>> from online.config import EventsConfig, ModelConfig
>>> from online.learning.learner import Learner
>>> from online.sources import KafkaBatch
>>> learner = Learner(ModelConfig(pipeline=[{"linear_model.LinearRegression": {}}], metrics=["MAE"]), EventsConfig(target="y"))
>>> class Printed:
...     def dead_letter(self, batch, index, reason, model=None):
...         print("dead letter", batch.offsets[index], reason)
>>> loop = LearningLoop([("lr", learner)], dead_letters=Printed())
>>> loop.feed(KafkaBatch(("events", 0), [b'{"x": 1, "y": 2}', b'{oops', b'{"x": 2, "y": 4}'], [10, 11, 12]))
dead letter 11 not JSON: unexpected character, expected a string key: line 1 column 2 (char 1)
3
>>> loop.positions, loop.consumed, loop.learned, loop.rejected
({('events', 0): 13}, 3, 2, 1)
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Hashable, Protocol

import orjson

from online.events import EventError
from online.learning.learner import HeldChunk, Learner
from online.sources import SourceBatch, position_key

__all__ = ["LearningLoop", "DeadLetterSink", "PredictionSink", "decode", "checkpoint_positions", "chunk_size"]


class DeadLetterSink(Protocol):
    def dead_letter(self, batch: SourceBatch, index: int, reason: str, model: str | None = None) -> None:
        """Record `batch`'s record `index` as rejected for `reason` (by `model` alone, when named)."""


class PredictionSink(Protocol):
    def predictions(self, batch: SourceBatch, outcomes: list) -> None:
        """Write ``(index, online.learning.learner.Prediction)`` pairs of records of `batch`."""


def decode(values: list) -> tuple[list, dict[int, str]]:
    """Raw JSON record values as events, and the reason for each record that is not one.

    >>> decode([b'{"a": 1}', None, b'[1'])
    ([{'a': 1}, None, None], {1: 'record has no value', 2: 'not JSON: unexpected end of data: line 1 column 3 (char 2)'})
    """
    loads = orjson.loads
    try:
        return [loads(v) for v in values], {}
    except (orjson.JSONDecodeError, TypeError):
        pass
    events, errors = [], {}
    for index, value in enumerate(values):
        if value is None:  # a tombstone: orjson would call it "not JSON"
            events.append(None)
            errors[index] = "record has no value"
            continue
        try:
            events.append(loads(value))
        except orjson.JSONDecodeError as error:
            events.append(None)
            errors[index] = f"not JSON: {error}"
        except TypeError:
            events.append(None)
            errors[index] = "record has no value"
    return events, errors


def chunk_size(learners: list[Learner]) -> int | None:
    """Records per chunk for these learners: their common multiple of ``model.batch.size`` (None: all per event).

    Each model then cuts the same chunks as it would alone (`online.learning.learner.Learner.process_many`).
    """
    sizes = [learner.batch_size for learner in learners if learner.batch_size]
    return math.lcm(*sizes) if sizes else None


def checkpoint_positions(positions: dict[Hashable, Any]) -> dict:
    """Source positions as a checkpoint records them (``"topic/partition": offset``, ``"replay": {...}``).

    >>> from online.readers import ReplayPosition
    >>> checkpoint_positions({("events", 0): 7, "replay": ReplayPosition(file="a", line=2)})
    {'events/0': 7, 'replay': {'order': 'file', 'file': 'a', 'line': 2, 'files_done': 0}}
    """
    out = {}
    for partition, position in positions.items():
        key = position_key(partition) if isinstance(partition, tuple) else str(partition)
        out[key] = position.to_json() if hasattr(position, "to_json") else position
    return out


class LearningLoop:
    """One learning unit's loop: `feed` batches, `flush` at the end; positions and counters kept here.

    `models` are ``(name, Learner)`` pairs (the first is the primary: its rejects are the dead
    letters; another model's reject of an event the first took is a dead letter naming that
    model). `predictions_model` names whose predictions go to the `predictions` sink (default:
    the first). The chunk size is the models' ``model.batch.size`` (`chunk_size`; per event, each
    batch is processed at once).
    `positions` are where the unit's partitions stand (`online.learning.unit.LearningUnit.seek` sets them on a restore).
    `curve` (an `online.observability.LearningCurve`) records each model's metrics every
    ``curve.every`` events (the dashboard's learning curve), under the model's name followed by
    ``(curve_unit)`` when given.
    """

    def __init__(self, models: list[tuple[str, Learner]], *, dead_letters: DeadLetterSink | None = None,
                 predictions: PredictionSink | None = None, predictions_model: str | None = None,
                 checkpointer=None, count_unreadable: bool = True,
                 curve=None, curve_unit: str | None = None, decoder=None):
        self.models = list(models)
        self.decoder = decoder  # kafka.format's decoder (online.formats.record_decoder): (values, topic) -> (events, reasons); None: JSON
        self.dead_letters = dead_letters
        self.prediction_sink = predictions
        names = [name for name, _ in self.models]
        self.predicting = names.index(predictions_model) if predictions_model is not None else 0
        self.checkpointer = checkpointer
        self.count_unreadable = count_unreadable  # unreadable records count towards the checkpoint cadence (the daemon's) or not (replay's)
        self.chunk = chunk_size([learner for _, learner in self.models])
        self.positions: dict = {}  # partition -> position after the last record processed
        self.read: dict = {}  # partition -> position after the last record fed (held ones too)
        self.held = HeldChunk(self.chunk) if self.chunk is not None else None  # parts of batches until a chunk is complete
        self.consumed = self.learned = self.rejected = 0
        self.curve = curve
        self._series = {name: name if curve_unit is None else f"{name} ({curve_unit})" for name in names}
        self._until_point = {name: curve.every if curve is not None else 0 for name in names}

    @property
    def learner(self) -> Learner:
        """The primary model's learner."""
        return self.models[0][1]

    def feed(self, batch: SourceBatch) -> int:
        """Process `batch` (or hold it until its chunk is complete); the number of records processed now."""
        if not len(batch):
            return 0
        self.read[batch.partition] = batch.next_position
        if self.chunk is None:
            return self._process([batch])
        done = 0
        while batch is not None:
            room = self.held.room
            head, batch = batch.take(room) if len(batch) > room else (batch, None)
            segments = self.held.hold(head, len(head))
            if segments is not None:
                done += self._process(segments)
        return done

    def flush(self) -> int:
        """Process the held records as a last, short chunk (the inputs ended, or the job stops)."""
        segments = self.held.release() if self.held is not None else None
        return self._process(segments) if segments else 0

    def drop(self) -> None:
        """Forget the held records (partitions given up): they are read again from `positions`."""
        if self.held is not None:
            self.held.release()
        self.read = dict(self.positions)

    def checkpoint_positions(self) -> dict:
        return checkpoint_positions(self.positions)

    def record_curve(self) -> None:
        """A learning-curve point of every model now (the newest state, between due points)."""
        if self.curve is not None:
            for name, learner in self.models:
                self.curve.record(self._series[name], learner.state.events_learned, learner.metric_values())

    def _learn(self, name: str, learner: Learner, events: list, on_error, predictions: list | None) -> int:
        """`learner.process_many`; with a learning curve, in slices that end where a curve point is due
        (whole chunks in mini-batch mode), recording the point after its slice. Indices stay the batch's."""
        curve = self.curve
        if curve is None:
            return learner.process_many(events, on_error=on_error, predictions=predictions)
        learned, low, total = 0, 0, len(events)
        while low < total:
            step = min(total - low, self._until_point[name])
            if self.chunk:
                step = min(total - low, -(-step // self.chunk) * self.chunk)
            if low == 0 and step == total:
                learned += learner.process_many(events, on_error=on_error, predictions=predictions)
            else:
                shifted = None if on_error is None else (lambda index, error, low=low: on_error(index + low, error))
                got = None if predictions is None else []
                learned += learner.process_many(events[low : low + step], on_error=shifted, predictions=got)
                if got:
                    predictions.extend((index + low, outcome) for index, outcome in got)
            self._until_point[name] -= step
            if self._until_point[name] <= 0:
                curve.record(self._series[name], learner.state.events_learned, learner.metric_values())
                self._until_point[name] = curve.every
            low += step
        return learned

    def _decode(self, batch: SourceBatch) -> tuple[list, dict[int, str]]:
        """A raw batch as events: JSON (`decode`), or through ``kafka.format``'s decoder with the batch's topic."""
        if self.decoder is None:
            return decode(batch.values)
        return self.decoder(batch.values, batch.partition[0] if isinstance(batch.partition, tuple) else str(batch.partition))

    def _process(self, segments: list) -> int:
        if len(segments) == 1:
            batch = segments[0]
            events, reasons = (batch.values, batch.reasons) if batch.decoded else self._decode(batch)
            starts = [0]
        else:
            events, reasons, starts = [], {}, []
            for batch in segments:
                values, errors = (batch.values, batch.reasons) if batch.decoded else self._decode(batch)
                starts.append(len(events))
                reasons.update({len(events) + i: reason for i, reason in errors.items()})
                events.extend(values)
        dead: list = []  # (index, reason, model or None)
        rejected: dict = {}
        outcomes: list | None = [] if self.prediction_sink is not None else None
        last = len(self.models) - 1
        copies = [[dict(e) if type(e) is dict else e for e in events] for _ in range(last)]  # a learner consumes its events
        learned = 0
        for position, (name, learner) in enumerate(self.models):
            given = copies[position] if position < last else events
            if position == 0:
                def on_error(index: int, error: EventError) -> None:
                    reason = reasons.get(index) or str(error)
                    rejected[index] = reason
                    dead.append((index, reason, None))
            else:
                def on_error(index: int, error: EventError, name=name) -> None:
                    if index not in rejected:
                        dead.append((index, reasons.get(index) or str(error), name))
            count = self._learn(name, learner, given, on_error, outcomes if position == self.predicting else None)
            if position == 0:
                learned = count
        if dead and self.dead_letters is not None:
            dead.sort(key=lambda item: item[0])
            for index, reason, model in dead:
                part = bisect.bisect_right(starts, index) - 1
                self.dead_letters.dead_letter(segments[part], index - starts[part], reason, model)
        if outcomes:
            if len(segments) == 1:
                self.prediction_sink.predictions(segments[0], outcomes)
            else:
                outcomes.sort(key=lambda item: item[0])
                for part, batch in enumerate(segments):
                    low = starts[part]
                    high = starts[part + 1] if part + 1 < len(starts) else len(events)
                    mine = [(index - low, outcome) for index, outcome in outcomes if low <= index < high]
                    if mine:
                        self.prediction_sink.predictions(batch, mine)
        for batch in segments:
            self.positions[batch.partition] = batch.next_position
        count = len(events)
        if self.checkpointer is not None:
            self.checkpointer.add(count if self.count_unreadable else count - len(reasons))
        self.consumed += count
        self.learned += learned
        self.rejected += len(rejected)
        return count
