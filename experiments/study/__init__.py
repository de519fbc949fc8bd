"""A study (tasks x models x seeds, from YAML): its schema (`config`), what it writes
(`results`), its trials (`trials`), running them under Ray Tune (`tuning`, `trial_logs`) and
`memrl train` (`launcher`)."""
