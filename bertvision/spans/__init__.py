"""SQuAD 2.0 spans: `windows` (contexts cut into windows of tokens, and back to text), `answers`
(best spans, the no-answer threshold, the official scores), `data` (token stores of windows in
memory and streamed), `tuning` (fine-tuning's span kind), `heads` (the span head kind) and
`ensemble` (members' probabilities combined by max or mean)."""
