"""The EC2 backend: deploy an image by digest to the Docker container on each EC2 instance of an
Auto Scaling group (or of a tag), in batches, through AWS Systems Manager Run Command.

``backend`` holds Ec2Backend (registered as "ec2" when this package is imported) and every AWS
call; ``validation`` its settings; ``scripts`` the shell it sends to the instances;
``instances`` the per-instance tracking of a deploy and the pure rules about batches. The names
below are re-exported so that ``from orchestration.ec2 import X`` keeps working. To replace how
AWS clients are made in a test, patch ``orchestration.ec2.backend.make_client``, where it is used.
"""

# Defined with the ECS backend; importable from here as before.
from orchestration.ecs import AwsError

from .backend import Ec2Backend
from .instances import (
    Instance,
    Outcome,
    Touched,
    allowed_errors,
    instance_image,
    instance_image_or_none,
    last_lines,
    split_batches,
)
from .scripts import ecr_registry, revert_script, switch_script
from .validation import SETTINGS_KEYS, validate_settings

__all__ = [
    "SETTINGS_KEYS",
    "AwsError",
    "Ec2Backend",
    "Instance",
    "Outcome",
    "Touched",
    "allowed_errors",
    "ecr_registry",
    "instance_image",
    "instance_image_or_none",
    "last_lines",
    "revert_script",
    "split_batches",
    "switch_script",
    "validate_settings",
]
