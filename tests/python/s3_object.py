"""Reads and writes objects of a test's S3 server as a user would, with boto3 (signed requests).

usage: s3_object.py ENDPOINT BUCKET put KEY < body
       s3_object.py ENDPOINT BUCKET get KEY > body      (exit 3 when absent)
       s3_object.py ENDPOINT BUCKET keys PREFIX          (one key per line)
"""
import sys

import boto3
from botocore.exceptions import ClientError

endpoint, bucket, verb, arg = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
if verb == "put":
    s3.put_object(Bucket=bucket, Key=arg, Body=sys.stdin.buffer.read())
elif verb == "get":
    try:
        sys.stdout.buffer.write(s3.get_object(Bucket=bucket, Key=arg)["Body"].read())
    except ClientError as e:
        if e.response["Error"]["Code"] in ("NoSuchKey", "404"):
            sys.exit(3)
        raise
elif verb == "keys":
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=arg):
        for o in page.get("Contents", []):
            print(o["Key"])
else:
    sys.exit(f"unknown verb {verb}")
