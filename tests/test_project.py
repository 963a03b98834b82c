"""The project's promises about itself: the README's commands, CI, and consistent requirements."""
import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_commands():
  return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_opens_with_install_and_main_job_then_tests():
  main_job, tests = readme_commands()[:2]
  assert main_job.startswith("python3 -m venv .venv") and main_job.endswith("train.py")
  assert tests.startswith("python3 -m venv .venv") and "pytest" in tests


def test_ci_runs_exactly_the_readme_test_command():
  ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
  assert readme_commands()[1] in ci_lines
  assert "set -euo pipefail" in ci_lines


def _names(requirements):
  return {re.split(r"[<>=\[; ]", r.strip())[0].lower().replace("_", "-")
          for r in requirements if r.strip() and not r.strip().startswith("#")}


def test_requirements_txt_and_pyproject_list_the_same_ranges():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  declared = list(project["dependencies"])
  for extra in project["optional-dependencies"].values():
    declared += [r for r in extra if not r.startswith("localmamba-jax")]
  requirements = (ROOT / "requirements.txt").read_text().splitlines()
  optional_only = {"torch"}   # reading .ckpt files needs torch; never needed at train time
  assert _names(requirements) == _names(declared) - optional_only
  ranges = {r.replace(" ", "") for r in requirements if r and not r.startswith("#")}
  for requirement in declared:
    if _names([requirement]) - optional_only:
      assert requirement.replace(" ", "") in ranges, requirement


def test_core_package_imports_no_training_stack():
  import subprocess
  import sys
  # (optax is imported by flax itself, so it is not on the list)
  code = ("import sys, localmamba_jax.models, localmamba_jax.ops, localmamba_jax.layers; "
          "heavy = {'orbax', 'grain', 'tensorflow_datasets', 'tensorflow', 'torch', "
          "'ml_collections', 'clu', 'sklearn'} & {m.split('.')[0] for m in sys.modules}; "
          "print(sorted(heavy)); assert not heavy")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
