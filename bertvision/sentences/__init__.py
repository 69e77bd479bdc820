"""Sentence tasks (classification, regression): `tuning` (fine-tuning's sentence kind), `heads`
(head kinds on cls/mean and on sentence token stores) and `ensemble` (greedy weights)."""
