"""Local Hugging Face ``evaluate`` metric modules (load with ``evaluate.load(<folder path>)``)."""
