"""Host-side data: tokenizer and chat template, anyres image crops, batch assembly."""
