"""boto3 against MinIO's STS and S3. Reads {"mode", "endpoint", "bucket",
"role_arn", "token_file", "tokens"} on stdin; the environment holds the
rest (AWS_CONFIG_FILE for credential_process, AWS_ROLE_ARN and
AWS_WEB_IDENTITY_TOKEN_FILE for the web identity chain). Prints one JSON
line."""
import json
import sys

import boto3
import botocore
from botocore.exceptions import ClientError

inp = json.load(sys.stdin)
endpoint, region = inp["endpoint"], "us-east-1"


def round_trip(session_or_creds):
    s3 = session_or_creds.client("s3", endpoint_url=endpoint, region_name=region)
    s3.create_bucket(Bucket=inp["bucket"])
    s3.put_object(Bucket=inp["bucket"], Key="k", Body=b"hello from boto3")
    return s3.get_object(Bucket=inp["bucket"], Key="k")["Body"].read().decode()


def botocore_at_least(major, minor):
    v = [int(x) for x in botocore.__version__.split(".")[:2]]
    return v >= [major, minor]


mode = inp["mode"]
if mode == "process":
    # The default chain, which finds credential_process in AWS_CONFIG_FILE.
    session = boto3.Session()
    body = round_trip(session)
    print(json.dumps({"body": body, "method": session.get_credentials().method}))
elif mode == "webidentity":
    if botocore_at_least(1, 31):
        # The default chain: AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE,
        # with AWS_ENDPOINT_URL_STS naming MinIO.
        session = boto3.Session()
        body = round_trip(session)
        print(json.dumps({"body": body, "method": session.get_credentials().method, "flow": "default chain"}))
    else:
        # Older botocore ignores AWS_ENDPOINT_URL_STS: the token file read
        # and passed to an STS client given MinIO's endpoint.
        sts = boto3.client("sts", endpoint_url=endpoint, region_name=region)
        with open(inp["token_file"]) as f:
            tok = f.read()
        c = sts.assume_role_with_web_identity(RoleArn=inp["role_arn"], RoleSessionName="web-1", WebIdentityToken=tok)["Credentials"]
        session = boto3.Session(aws_access_key_id=c["AccessKeyId"], aws_secret_access_key=c["SecretAccessKey"], aws_session_token=c["SessionToken"])
        body = round_trip(session)
        print(json.dumps({"body": body, "method": "assume_role_with_web_identity", "flow": "explicit endpoint"}))
elif mode == "negatives":
    sts = boto3.client("sts", endpoint_url=endpoint, region_name=region,
                       aws_access_key_id="unused", aws_secret_access_key="unused")
    out = {}
    for name, tok in inp["tokens"].items():
        try:
            sts.assume_role_with_web_identity(RoleArn=inp["role_arn"], RoleSessionName="web-1", WebIdentityToken=tok)
            out[name] = {"ok": True}
        except ClientError as e:
            out[name] = {"ok": False, "error": e.response["Error"]["Code"]}
    print(json.dumps(out))
