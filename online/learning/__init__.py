"""Learning: River's progressive validation (predict, score, then learn) for every job.

Owns `interface` (what every learner offers: `OnlineLearner`), `learner` (one model, per-key
models, delayed labels, mini-batches), `loop` (batches of a
source into one or several learners, rejected records to the dead-letter sink), `unit` (the
learning unit every job runs: a source, its learners, a checkpointer and sinks; `step` and
`checkpoint`), `model_set`
(several models side by side), `leaderboard` (models ranked by a headline metric, for every job), `keyed_state` (per-key models over a bounded cache and an
embedded store) and `gc_tuning`. May import the base of `online` only (config, events, models,
sources, ...); never checkpoints, consume, replay or serving.
"""
