"""Drives spotinfer's Files + Batches API with the official openai SDK, unchanged client code.

Usage: python openai_batch.py BASE_URL INPUT_JSONL
Prints one JSON object: the final batch, the output lines and the error lines.
"""
import json
import sys
import time

from openai import OpenAI

base_url, input_path = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=f"{base_url}/v1", api_key="not-needed", max_retries=0)

with open(input_path, "rb") as f:
    uploaded = client.files.create(file=f, purpose="batch")
assert uploaded.purpose == "batch", uploaded
assert client.files.retrieve(uploaded.id).bytes == uploaded.bytes

batch = client.batches.create(
    input_file_id=uploaded.id,
    endpoint="/v1/embeddings",
    completion_window="24h",
    metadata={"suite": "openai-sdk"},
)
deadline = time.time() + 120
while batch.status not in ("completed", "failed", "cancelled", "expired"):
    if time.time() > deadline:
        raise SystemExit(f"batch did not finish: {batch}")
    time.sleep(0.2)
    batch = client.batches.retrieve(batch.id)

listed = client.batches.list(limit=10)
assert any(b.id == batch.id for b in listed.data), listed

output = client.files.content(batch.output_file_id).text.splitlines() if batch.output_file_id else []
errors = client.files.content(batch.error_file_id).text.splitlines() if batch.error_file_id else []
print(json.dumps({
    "batch": batch.model_dump(),
    "output": [json.loads(line) for line in output],
    "errors": [json.loads(line) for line in errors],
}))
