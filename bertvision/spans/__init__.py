"""SQuAD 2.0 spans: `windows` (contexts cut into windows, and back to text), `answers` (best spans,
the no-answer threshold, scores), `data` (token stores of windows), `tuning`, `heads`, `ensemble`."""
