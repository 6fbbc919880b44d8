#!/usr/bin/env python3
"""Tests of stack/mfbatch.yaml: cfn-lint, then real deployments on moto's CloudFormation.

Run with the moto harness venv (tests/moto/setup-venv.sh), e.g. via tests/stack/run.sh:
    <venv>/bin/python tests/stack/test_template.py -v [TemplateLint | TemplateOnMoto ...]

moto runs in-process (ThreadedMotoServer on a free 127.0.0.1 port) and boto3 talks to
it over HTTP, as mfbatch would. No network access, no real AWS credentials.

moto 5.2.5's CloudFormation leaves some of the template's properties out. The template
avoids the gaps it can with equally valid CloudFormation (see its header); the rest are
closed here, before the server starts, by teaching moto the missing piece from the
template's own properties (patch_moto). Each patch applies exactly what the template
declares, through moto's own S3/IAM APIs, so the checks below still test the template:
  1. AWS::S3::Bucket ignores PublicAccessBlockConfiguration  -> applied on create.
  2. AWS::S3::BucketPolicy is not supported (skipped with a warning) -> a minimal model.
  3. AWS::IAM::Role ignores ManagedPolicyArns -> attached on create (detached on delete);
     moto only accepts ARNs of policies it knows, so a misspelt AWS managed policy fails
     the deployment.
  4. AWS::IAM::Role keeps inline Policies as Python dicts (GetRolePolicy returns their
     repr) -> stored as JSON.
  5. AWS::EC2::Subnet ignores MapPublicIpOnLaunch -> applied on create.
  6. AWS::EC2::SubnetRouteTableAssociation is not visible in DescribeRouteTables ->
     associated through the EC2 backend as well (and disassociated on delete).
  7. AWS::EC2::RouteTable is never deleted, so deleting a stack that created its VPC
     fails (moto refuses to delete a VPC with a non-main route table) -> deleted.
Left as they are (nothing here depends on them): moto never deletes the Batch compute
environments and queues nor the internet gateway of a deleted stack; !GetAZs '' always
gives us-east-1's zones; the template's Rules are not evaluated (cfn-lint checks them).
"""
import json
import os
import subprocess
import sys
import unittest
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "stack" / "mfbatch.yaml"
REGION = "us-east-1"

# Never pick up real credentials or a profile; moto accepts anything.
for _key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
    os.environ.pop(_key, None)
os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": REGION,
                   # AWS managed policies (AWSBatchServiceRole, ...) exist only if loaded.
                   "MOTO_IAM_LOAD_MANAGED_POLICIES": "true"})

import boto3  # noqa: E402  (after the environment is set)
from botocore.exceptions import ClientError  # noqa: E402

# Outputs every deployment has; the first four are metaflow-tools' names.
OUTPUTS = ["MetaflowDataStoreS3Url", "MetaflowDataToolsS3Url", "BatchJobQueueArn",
           "ECSJobRoleForBatchJobs", "MetaflowS3BucketName", "ComputeEnvironmentArn",
           "ComputeEnvironmentName", "BatchLogGroupName", "Region", "VPCId", "SubnetIds"]
FARGATE_OUTPUTS = ["ECSFargateExecutionRoleArn", "FargateJobQueueArn",
                   "FargateComputeEnvironmentArn", "FargateComputeEnvironmentName"]


def patch_moto():
    """Close moto's CloudFormation gaps the template cannot avoid (module docstring)."""
    from moto.cloudformation import parsing
    from moto.core.common_models import CloudFormationModel
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.route_tables import RouteTable
    from moto.ec2.models.subnets import Subnet, SubnetRouteTableAssociation
    from moto.iam.models import Role, iam_backends
    from moto.s3.models import FakeBucket, s3_backends
    from moto.utilities.utils import get_partition

    def after_create(model, finish):
        """Run finish(resource, properties, account_id, region) after moto creates `model`."""
        create = model.create_from_cloudformation_json.__func__

        def patched(cls, resource_name, cloudformation_json, account_id, region_name, **kw):
            resource = create(cls, resource_name, cloudformation_json, account_id,
                              region_name, **kw)
            finish(resource, cloudformation_json.get("Properties", {}), account_id, region_name)
            return resource

        model.create_from_cloudformation_json = classmethod(patched)

    s3 = lambda account, region: s3_backends[account][get_partition(region)]  # noqa: E731
    iam = lambda account, region: iam_backends[account][get_partition(region)]  # noqa: E731

    # 1. Bucket: apply PublicAccessBlockConfiguration like PutPublicAccessBlock.
    def bucket_block(bucket, props, account, region):
        if "PublicAccessBlockConfiguration" in props:
            s3(account, region).put_public_access_block(
                bucket.name, props["PublicAccessBlockConfiguration"])

    after_create(FakeBucket, bucket_block)

    # 2. Bucket policy: PutBucketPolicy on create, DeleteBucketPolicy on delete
    #    (moto itself skips resources with DeletionPolicy: Retain on delete).
    class BucketPolicy(CloudFormationModel):
        __module__ = "moto.s3.models"  # moto files each model class under its service

        def __init__(self, bucket):
            self.bucket = bucket

        @property
        def physical_resource_id(self):
            return self.bucket

        @staticmethod
        def cloudformation_type():
            return "AWS::S3::BucketPolicy"

        @staticmethod
        def cloudformation_name_type():
            return ""

        @classmethod
        def create_from_cloudformation_json(cls, resource_name, cloudformation_json,
                                            account_id, region_name, **kw):
            props = cloudformation_json["Properties"]
            s3(account_id, region_name).put_bucket_policy(
                props["Bucket"], json.dumps(props["PolicyDocument"]).encode())
            return cls(props["Bucket"])

        @classmethod
        def delete_from_cloudformation_json(cls, resource_name, cloudformation_json,
                                            account_id, region_name):
            s3(account_id, region_name).delete_bucket_policy(
                cloudformation_json["Properties"]["Bucket"])

    for cached in (parsing.get_model_list, parsing.get_model_map, parsing.get_name_type_map):
        cached.cache_clear()  # rebuilt from CloudFormationModel.__subclasses__()
    assert parsing.get_model_map()["AWS::S3::BucketPolicy"] is BucketPolicy

    # 3. Role: attach ManagedPolicyArns (moto rejects ARNs of policies it does not know).
    # 4. Role: moto keeps CFN inline Policies as Python dicts, so GetRolePolicy returns
    #    their repr(); store them as JSON, as PutRolePolicy does.
    def role_policies(role, props, account, region):
        for arn in props.get("ManagedPolicyArns", []):
            iam(account, region).attach_role_policy(arn, role.name)
        for policy in props.get("Policies", []):
            role.put_policy(policy["PolicyName"], json.dumps(policy["PolicyDocument"]))

    after_create(Role, role_policies)
    role_delete = Role.delete_from_cloudformation_json.__func__

    def delete_role(cls, resource_name, cloudformation_json, account_id, region_name):
        # CloudFormation detaches the managed policies it attached before deleting.
        # (cloudformation_json is the unresolved template here, so ask the role.)
        backend = iam(account_id, region_name)
        for arn in list(backend.get_role(resource_name).managed_policies):
            backend.detach_role_policy(arn, resource_name)
        role_delete(cls, resource_name, cloudformation_json, account_id, region_name)

    Role.delete_from_cloudformation_json = classmethod(delete_role)

    # 5. Subnet: apply MapPublicIpOnLaunch like ModifySubnetAttribute.
    def subnet_public_ip(subnet, props, account, region):
        if "MapPublicIpOnLaunch" in props:
            ec2_backends[account][region].modify_subnet_attribute(
                subnet.id, "map_public_ip_on_launch",
                str(props["MapPublicIpOnLaunch"]).lower() == "true")

    after_create(Subnet, subnet_public_ip)

    # 6. SubnetRouteTableAssociation: moto records it apart from the route table, so
    #    DescribeRouteTables shows no association; associate like AssociateRouteTable.
    #    Deleting the resource disassociates again (moto has no delete for it).
    def associate(association, props, account, region):
        association.association_id = ec2_backends[account][region].associate_route_table(
            association.route_table_id, subnet_id=association.subnet_id)

    def disassociate(association, account_id, region_name):
        ec2_backends[account_id][region_name].disassociate_route_table(
            association.association_id)

    after_create(SubnetRouteTableAssociation, associate)
    SubnetRouteTableAssociation.delete = disassociate

    # 7. RouteTable has no delete in moto, and moto refuses to delete a VPC that still
    #    has a non-main route table, so deleting a stack that made a VPC failed.
    def delete_route_table(table, account_id, region_name):
        ec2_backends[account_id][region_name].delete_route_table(table.id)

    RouteTable.delete = delete_route_table


def start_moto():
    import logging
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    patch_moto()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


class TemplateLint(unittest.TestCase):
    def test_cfn_lint_is_clean(self):
        """cfn-lint (the venv's pinned version) reports nothing, informational included."""
        run = subprocess.run(
            [sys.executable, "-c", "import sys; from cfnlint.runner import main; sys.exit(main())",
             "--include-checks", "I", "--", str(TEMPLATE)],
            capture_output=True, text=True, timeout=120)
        self.assertEqual(run.returncode, 0, f"cfn-lint:\n{run.stdout}{run.stderr}")
        self.assertEqual(run.stdout.strip(), "")


class TemplateOnMoto(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server, endpoint = start_moto()
        session = boto3.session.Session(region_name=REGION)
        client = lambda name: session.client(name, endpoint_url=endpoint)  # noqa: E731
        cls.cfn, cls.batch, cls.s3 = client("cloudformation"), client("batch"), client("s3")
        cls.iam, cls.ec2 = client("iam"), client("ec2")
        cls.body = TEMPLATE.read_text()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    # ------------------------------------------------------------- helpers

    def deploy(self, **params):
        """create_stack with `params` (nothing else: the template's defaults), wait, return outputs."""
        name = f"mfbatch-{uuid.uuid4().hex[:8]}"
        self.cfn.create_stack(
            StackName=name, TemplateBody=self.body, Capabilities=["CAPABILITY_IAM"],
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()])
        try:
            self.cfn.get_waiter("stack_create_complete").wait(
                StackName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        except Exception:
            events = self.cfn.describe_stack_events(StackName=name)["StackEvents"]
            reasons = [f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason')}"
                       for e in events if "FAILED" in e["ResourceStatus"]]
            self.fail(f"stack {name} did not reach CREATE_COMPLETE: {reasons}")
        stack = self.cfn.describe_stacks(StackName=name)["Stacks"][0]
        self.assertEqual(stack["StackStatus"], "CREATE_COMPLETE")
        return name, {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}

    def assert_queue(self, queue_arn, ce_type):
        """The queue is ENABLED/VALID and its one compute environment is ENABLED/VALID, of ce_type."""
        queues = self.batch.describe_job_queues(jobQueues=[queue_arn])["jobQueues"]
        self.assertEqual(len(queues), 1, queue_arn)
        self.assertEqual((queues[0]["state"], queues[0]["status"]), ("ENABLED", "VALID"))
        order = [o["computeEnvironment"] for o in queues[0]["computeEnvironmentOrder"]]
        self.assertEqual(len(order), 1)
        envs = self.batch.describe_compute_environments(
            computeEnvironments=order)["computeEnvironments"]
        self.assertEqual(len(envs), 1)
        ce = envs[0]
        self.assertEqual((ce["state"], ce["status"], ce["type"]), ("ENABLED", "VALID", "MANAGED"))
        self.assertEqual(ce["computeResources"]["type"], ce_type)
        return ce

    def assert_trusts_ecs_tasks(self, role_arn):
        role = self.iam.get_role(RoleName=role_arn.rsplit("/", 1)[1])["Role"]
        self.assertEqual(role["Arn"], role_arn)
        doc = role["AssumeRolePolicyDocument"]
        doc = json.loads(doc) if isinstance(doc, str) else doc
        principals = [s["Principal"]["Service"] for s in doc["Statement"]
                      if s["Effect"] == "Allow" and s["Action"] == "sts:AssumeRole"]
        self.assertEqual(principals, ["ecs-tasks.amazonaws.com"])
        return role

    def assert_bucket(self, bucket):
        enc = self.s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
        self.assertEqual(enc["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"],
                         "AES256")
        block = self.s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        self.assertEqual(block, {"BlockPublicAcls": True, "IgnorePublicAcls": True,
                                 "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
        self.assert_tls_only(bucket)

    def assert_tls_only(self, bucket):
        policy = json.loads(self.s3.get_bucket_policy(Bucket=bucket)["Policy"])
        [deny] = [s for s in policy["Statement"] if s["Effect"] == "Deny"]
        self.assertEqual(deny["Condition"], {"Bool": {"aws:SecureTransport": "false"}})
        self.assertEqual(sorted(deny["Resource"]),
                         [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"])
        # moto evaluates bucket policies on object requests, and this endpoint is
        # plain http://, so the policy must refuse a write.
        with self.assertRaises(ClientError) as refused:
            self.s3.put_object(Bucket=bucket, Key="metaflow/probe", Body=b"x")
        self.assertEqual(refused.exception.response["ResponseMetadata"]["HTTPStatusCode"], 403)

    def assert_job_role(self, role_arn, bucket):
        """Trusted by ecs-tasks; S3 access only to the bucket; logs only to /aws/batch/job."""
        role = self.assert_trusts_ecs_tasks(role_arn)
        name = role["RoleName"]
        resources = []
        for policy in self.iam.list_role_policies(RoleName=name)["PolicyNames"]:
            doc = self.iam.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"]
            doc = json.loads(doc) if isinstance(doc, str) else doc
            for statement in doc["Statement"]:
                self.assertEqual(statement["Effect"], "Allow")
                res = statement["Resource"]
                resources += res if isinstance(res, list) else [res]
        self.assertEqual(sorted(resources), sorted([
            f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*",
            f"arn:aws:logs:{REGION}:123456789012:log-group:/aws/batch/job:*"]))
        self.assertEqual(self.iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"], [])

    def delete_and_check_bucket_kept(self, name, out):
        """Delete the stack: the bucket (and its TLS-only policy) stay, the rest goes."""
        bucket = out["MetaflowS3BucketName"]
        self.cfn.delete_stack(StackName=name)
        self.cfn.get_waiter("stack_delete_complete").wait(
            StackName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        self.s3.head_bucket(Bucket=bucket)
        self.assert_tls_only(bucket)
        with self.assertRaises(self.iam.exceptions.NoSuchEntityException):
            self.iam.get_role(RoleName=out["ECSJobRoleForBatchJobs"].rsplit("/", 1)[1])
        # moto's Batch models have no CloudFormation delete, so on moto the queues and
        # compute environments outlive the stack (AWS deletes them); not checked.

    # --------------------------------------------------------------- tests

    def test_defaults(self):
        """No parameters at all: new VPC, on-demand EC2 only, a generated bucket name."""
        name, out = self.deploy()
        self.assertEqual(sorted(out), sorted(OUTPUTS))
        bucket = out["MetaflowS3BucketName"]
        self.assertEqual(out["MetaflowDataStoreS3Url"], f"s3://{bucket}/metaflow")
        self.assertEqual(out["MetaflowDataToolsS3Url"], f"s3://{bucket}/data")
        self.assertEqual(out["BatchLogGroupName"], "/aws/batch/job")
        self.assertEqual(out["Region"], REGION)

        ce = self.assert_queue(out["BatchJobQueueArn"], "EC2")
        self.assertEqual(ce["computeEnvironmentArn"], out["ComputeEnvironmentArn"])
        self.assertEqual(ce["computeEnvironmentName"], out["ComputeEnvironmentName"])
        res = ce["computeResources"]
        self.assertEqual((res["minvCpus"], res["maxvCpus"]), (0, 64))
        self.assertEqual(res["instanceTypes"], ["optimal"])
        self.assertEqual(res["allocationStrategy"], "BEST_FIT_PROGRESSIVE")
        self.assertEqual(sorted(res["subnets"]), sorted(out["SubnetIds"].split(",")))

        # The new VPC: two subnets in two zones, public IPs, a default route to an IGW.
        subnets = self.ec2.describe_subnets(SubnetIds=res["subnets"])["Subnets"]
        self.assertEqual({s["VpcId"] for s in subnets}, {out["VPCId"]})
        self.assertEqual(len({s["AvailabilityZone"] for s in subnets}), 2)
        self.assertTrue(all(s["MapPublicIpOnLaunch"] for s in subnets))
        tables = self.ec2.describe_route_tables(Filters=[
            {"Name": "association.subnet-id", "Values": res["subnets"]}])["RouteTables"]
        self.assertEqual(len(tables), 1)
        self.assertTrue(any(r.get("DestinationCidrBlock") == "0.0.0.0/0" and
                            r.get("GatewayId", "").startswith("igw-")
                            for r in tables[0]["Routes"]))
        [group] = self.ec2.describe_security_groups(GroupIds=res["securityGroupIds"])["SecurityGroups"]
        self.assertEqual(group["VpcId"], out["VPCId"])
        self.assertEqual(group["IpPermissions"], [])

        # Roles: the service role and instance profile behind the compute environment.
        service_role = self.iam.get_role(RoleName=ce["serviceRole"].rsplit("/", 1)[1])["Role"]
        self.assertIn("batch.amazonaws.com", json.dumps(service_role["AssumeRolePolicyDocument"]))
        self.assertEqual(
            [p["PolicyArn"] for p in self.iam.list_attached_role_policies(
                RoleName=service_role["RoleName"])["AttachedPolicies"]],
            ["arn:aws:iam::aws:policy/service-role/AWSBatchServiceRole"])
        profile = self.iam.get_instance_profile(
            InstanceProfileName=res["instanceRole"].rsplit("/", 1)[1])["InstanceProfile"]
        [instance_role] = profile["Roles"]
        self.assertEqual(
            [p["PolicyArn"] for p in self.iam.list_attached_role_policies(
                RoleName=instance_role["RoleName"])["AttachedPolicies"]],
            ["arn:aws:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"])

        self.assert_bucket(bucket)
        self.assert_job_role(out["ECSJobRoleForBatchJobs"], bucket)
        self.delete_and_check_bucket_kept(name, out)
        self.assertEqual(self.ec2.describe_vpcs(
            Filters=[{"Name": "vpc-id", "Values": [out["VPCId"]]}])["Vpcs"], [])

    def test_fargate_spot_existing_vpc(self):
        """EnableFargate, Spot, given instance types, an existing VPC and subnets, a named bucket."""
        vpc = self.ec2.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
        subnets = [self.ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.77.{i}.0/24",
                                          AvailabilityZone=f"{REGION}{az}")["Subnet"]["SubnetId"]
                   for i, az in enumerate("ab")]
        bucket = f"mfbatch-test-{uuid.uuid4().hex[:8]}"
        name, out = self.deploy(
            EnableFargate="true", ComputeType="SPOT", MinVCpus="0", MaxVCpus="16",
            InstanceTypes="c5,m5.large", VpcId=vpc, SubnetIds=",".join(subnets),
            BucketName=bucket)
        self.assertEqual(sorted(out), sorted(OUTPUTS + FARGATE_OUTPUTS))
        self.assertEqual(out["MetaflowS3BucketName"], bucket)
        self.assertEqual(out["MetaflowDataStoreS3Url"], f"s3://{bucket}/metaflow")
        self.assertEqual((out["VPCId"], out["SubnetIds"]), (vpc, ",".join(subnets)))
        # Nothing of the optional networking was created.
        self.assertEqual(len(self.ec2.describe_vpcs(Filters=[
            {"Name": "tag:aws:cloudformation:stack-name", "Values": [name]}])["Vpcs"]), 0)

        ec2_ce = self.assert_queue(out["BatchJobQueueArn"], "SPOT")
        res = ec2_ce["computeResources"]
        self.assertEqual((res["minvCpus"], res["maxvCpus"]), (0, 16))
        self.assertEqual(res["instanceTypes"], ["c5", "m5.large"])
        self.assertEqual(res["allocationStrategy"], "SPOT_PRICE_CAPACITY_OPTIMIZED")
        self.assertEqual(res["subnets"], subnets)

        fargate_ce = self.assert_queue(out["FargateJobQueueArn"], "FARGATE")
        self.assertEqual(fargate_ce["computeEnvironmentArn"], out["FargateComputeEnvironmentArn"])
        self.assertEqual(fargate_ce["computeEnvironmentName"], out["FargateComputeEnvironmentName"])
        self.assertEqual(fargate_ce["computeResources"]["subnets"], subnets)
        self.assertNotEqual(out["FargateJobQueueArn"], out["BatchJobQueueArn"])
        [group] = self.ec2.describe_security_groups(
            GroupIds=res["securityGroupIds"])["SecurityGroups"]
        self.assertEqual(group["VpcId"], vpc)

        execution = self.assert_trusts_ecs_tasks(out["ECSFargateExecutionRoleArn"])
        self.assertEqual(
            [p["PolicyArn"] for p in self.iam.list_attached_role_policies(
                RoleName=execution["RoleName"])["AttachedPolicies"]],
            ["arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"])
        self.assert_bucket(bucket)
        self.assert_job_role(out["ECSJobRoleForBatchJobs"], bucket)
        self.delete_and_check_bucket_kept(name, out)
        # The existing networking is left alone.
        self.assertEqual(len(self.ec2.describe_subnets(SubnetIds=subnets)["Subnets"]), 2)


if __name__ == "__main__":
    unittest.main()
