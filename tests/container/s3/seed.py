"""Upload /data (the example data) into the bucket named by SEED_BUCKET.

Used by the `s3-seed` service of docker-compose.yml's `s3` profile; runs in the
sidecar image, which already has boto3. The endpoint and credentials come from
the standard AWS_* variables (AWS_ENDPOINT_URL_S3 for a local server).
"""
import os
import pathlib
import sys
import time

import boto3


def main() -> int:
    bucket = os.environ.get("SEED_BUCKET", "sagemaker-pipe-examples")
    root = pathlib.Path(os.environ.get("SEED_DIR", "/data"))
    s3 = boto3.client("s3")
    deadline = time.monotonic() + 60
    while True:
        try:
            s3.create_bucket(Bucket=bucket)
            break
        except s3.exceptions.BucketAlreadyOwnedByYou:
            break
        except Exception as exc:  # the server may still be starting
            if time.monotonic() > deadline:
                print(f"seed: cannot create bucket {bucket}: {exc}", file=sys.stderr)
                return 1
            time.sleep(1)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for path in files:
        key = path.relative_to(root).as_posix()
        s3.upload_file(str(path), bucket, key)
    print(f"seed: {len(files)} objects uploaded to s3://{bucket}/", flush=True)
    return 0 if files else 1


if __name__ == "__main__":
    sys.exit(main())
