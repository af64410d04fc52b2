"""The list of subcommands `ncsn` exposes; each lives in its own module."""

from .evaluate import eval_command
from .inpaint import inpaint_command
from .likelihood import likelihood_command
from .noise_plan import noise_plan_command
from .run import demo_command, export_command, sample_command, train_command
from .toy import toy

ALL: list = [train_command, sample_command, export_command, demo_command, toy, eval_command, inpaint_command,
             noise_plan_command, likelihood_command]
