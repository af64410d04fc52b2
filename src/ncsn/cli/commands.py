"""The list of subcommands `ncsn` exposes; each lives in its own module."""

from .demo import demo_command
from .evaluate import eval_command
from .export import export_command
from .inpaint import inpaint_command
from .likelihood import likelihood_command
from .noise_plan import noise_plan_command
from .sample import sample_command
from .toy import toy
from .train import train_command

ALL: list = [train_command, sample_command, export_command, demo_command, toy, eval_command, inpaint_command,
             noise_plan_command, likelihood_command]
