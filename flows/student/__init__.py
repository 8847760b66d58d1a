"""The student: bases (base.py), training examples per objective (examples.py), losses
(losses.py), the training loop (trainer.py) and the `stairs validate` check (check.py).
The stage itself is flows/train.py; evaluation of any model is flows/evaluate.py."""
