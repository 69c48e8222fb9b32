"""This project's own checkov checks over template.yaml (see security/checkov.yaml).

checkov's built-in IAM checks do not read the inline `Policies` of SAM functions and
state machines, which is where this template grants everything; these do.
"""

from checkov.cloudformation.checks.resource.base_resource_check import BaseResourceCheck
from checkov.common.models.enums import CheckCategories, CheckResult

POLICY_HOLDERS = [
    "AWS::Serverless::Function",
    "AWS::Serverless::StateMachine",
    "AWS::IAM::Role",
    "AWS::IAM::Policy",
    "AWS::IAM::ManagedPolicy",
    "AWS::S3::BucketPolicy",
]

# Actions that take no resource ARN, so "*" is the only resource they can have.
RESOURCELESS_ACTIONS = {
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
}


def as_list(value):
    return value if isinstance(value, list) else [value]


def allow_statements(conf):
    """Every Allow statement of the resource's inline policy documents."""
    properties = conf.get("Properties") or {}
    documents = []
    for policy in as_list(properties.get("Policies") or []):
        if isinstance(policy, dict):
            documents.append(policy.get("PolicyDocument", policy))
    for name in ("PolicyDocument", "AssumeRolePolicyDocument"):
        if isinstance(properties.get(name), dict) and name != "AssumeRolePolicyDocument":
            documents.append(properties[name])
    for document in documents:
        for statement in as_list(document.get("Statement") or []):
            if isinstance(statement, dict) and statement.get("Effect") == "Allow":
                yield statement


class NoWildcardActions(BaseResourceCheck):
    def __init__(self):
        super().__init__(
            name="Allow statements name their actions: no '*' in an action",
            id="CKV_S3TF_1",
            categories=[CheckCategories.IAM],
            supported_resources=POLICY_HOLDERS,
        )

    def scan_resource_conf(self, conf):
        for statement in allow_statements(conf):
            if any(isinstance(a, str) and "*" in a for a in as_list(statement.get("Action", []))):
                return CheckResult.FAILED
            if "NotAction" in statement:
                return CheckResult.FAILED
        return CheckResult.PASSED


class NoWildcardResources(BaseResourceCheck):
    def __init__(self):
        super().__init__(
            name="Allow statements name their resources: '*' only for actions that take none",
            id="CKV_S3TF_2",
            categories=[CheckCategories.IAM],
            supported_resources=POLICY_HOLDERS,
        )

    def scan_resource_conf(self, conf):
        for statement in allow_statements(conf):
            resources = as_list(statement.get("Resource", []))
            if "NotResource" in statement:
                return CheckResult.FAILED
            if "*" in resources and not set(as_list(statement.get("Action", []))) <= RESOURCELESS_ACTIONS:
                return CheckResult.FAILED
        return CheckResult.PASSED


class TableEncryptedAtRest(BaseResourceCheck):
    def __init__(self):
        super().__init__(
            name="DynamoDB tables say SSESpecification.SSEEnabled: true",
            id="CKV_S3TF_3",
            categories=[CheckCategories.ENCRYPTION],
            supported_resources=["AWS::DynamoDB::Table"],
        )

    def scan_resource_conf(self, conf):
        sse = (conf.get("Properties") or {}).get("SSESpecification") or {}
        return CheckResult.PASSED if sse.get("SSEEnabled") is True else CheckResult.FAILED


class NoPublicBucket(BaseResourceCheck):
    def __init__(self):
        super().__init__(
            name="Buckets block every kind of public access",
            id="CKV_S3TF_4",
            categories=[CheckCategories.GENERAL_SECURITY],
            supported_resources=["AWS::S3::Bucket"],
        )

    def scan_resource_conf(self, conf):
        properties = conf.get("Properties") or {}
        block = properties.get("PublicAccessBlockConfiguration") or {}
        settings = ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")
        if not all(block.get(s) is True for s in settings):
            return CheckResult.FAILED
        if properties.get("AccessControl") not in (None, "Private", "BucketOwnerFullControl"):
            return CheckResult.FAILED
        return CheckResult.PASSED


class NoPublicBucketPolicy(BaseResourceCheck):
    def __init__(self):
        super().__init__(
            name="Bucket policies allow nothing to everyone",
            id="CKV_S3TF_5",
            categories=[CheckCategories.GENERAL_SECURITY],
            supported_resources=["AWS::S3::BucketPolicy"],
        )

    def scan_resource_conf(self, conf):
        for statement in allow_statements(conf):
            principal = statement.get("Principal")
            if principal == "*" or (isinstance(principal, dict) and "*" in as_list(principal.get("AWS", []))):
                return CheckResult.FAILED
        return CheckResult.PASSED


NoWildcardActions()
NoWildcardResources()
TableEncryptedAtRest()
NoPublicBucket()
NoPublicBucketPolicy()
