#!/usr/bin/env python3
"""packaging/spack/{package,libcsv}.py checked without Spack (not installed here): both import
under a stub of Spack's package API (spack.package: directives, build-system classes, helpers),
in Spack 0.x's layout and in Spack 1.0's (build systems in spack_repo.builtin.build_systems);
their directives and cmake_args() are then checked against what the build needs.

Usage: check_spack_recipe.py REPO. Exit 1 naming each problem, else 0 with a summary.
"""
import importlib.util
import os
import re
import sys
import types

RECORDED = []  # (directive, args, kwargs) in the order the class bodies ran


def directive(name):
    def record(*args, **kwargs):
        RECORDED.append((name, args, kwargs))
    return record


def make_stub(spack_one):
    """Installs spack.package (and, for Spack 1.0, spack_repo.builtin.build_systems.*) in sys.modules;
    returns the build-system classes the recipe must derive from."""
    for name in [m for m in sys.modules if m == "spack" or m.startswith(("spack.", "spack_repo"))]:
        del sys.modules[name]
    package = types.ModuleType("spack.package")
    for name in ("version", "variant", "depends_on", "conflicts", "license", "maintainers",
                 "provides", "patch", "resource", "requires"):
        setattr(package, name, directive(name))

    class PackageBase:
        run_tests = False

        def define(self, name, value):
            if isinstance(value, bool):
                value = "ON" if value else "OFF"
            elif isinstance(value, (list, tuple)):
                value = ";".join(value)
            return f"-D{name}={value}"

    class CMakePackage(PackageBase):
        pass

    class AutotoolsPackage(PackageBase):
        pass

    class CudaPackage(PackageBase):
        cuda_arch_values = ("50", "60", "70", "75", "80", "86", "89", "90", "90a")
        package.variant("cuda", default=False)
        package.variant("cuda_arch", values=("none",) + cuda_arch_values, default="none", multi=True)

    package.PackageBase = PackageBase
    package.run_after = lambda *a, **k: (lambda f: f)
    package.on_package_attributes = lambda **k: (lambda f: f)
    package.Executable = lambda path: (lambda *args: None)
    package.join_path = os.path.join
    spack = types.ModuleType("spack")
    spack.package = package
    sys.modules.update({"spack": spack, "spack.package": package})
    bases = {"CMakePackage": CMakePackage, "CudaPackage": CudaPackage, "AutotoolsPackage": AutotoolsPackage}
    if spack_one:
        for module, cls in (("cmake", "CMakePackage"), ("cuda", "CudaPackage"), ("autotools", "AutotoolsPackage")):
            parts = ["spack_repo", "spack_repo.builtin", "spack_repo.builtin.build_systems",
                     f"spack_repo.builtin.build_systems.{module}"]
            for part in parts:
                sys.modules.setdefault(part, types.ModuleType(part))
            setattr(sys.modules[parts[-1]], cls, bases[cls])
    else:
        for cls, value in bases.items():
            setattr(package, cls, value)
    return bases


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Spec:
    """Enough of a concrete spec for cmake_args()."""

    def __init__(self, cuda, archs):
        self.cuda, self.archs = cuda, archs
        self.variants = {"cuda_arch": types.SimpleNamespace(value=archs)}

    def satisfies(self, constraint):
        return {"+cuda": self.cuda, "~cuda": not self.cuda}[constraint]

    def __getitem__(self, name):
        return types.SimpleNamespace(mpicc=f"/opt/{name}/bin/mpicc", prefix=f"/opt/{name}")


def check(repo, spack_one):
    problems = []
    layout = "Spack 1.0" if spack_one else "Spack 0.x"
    RECORDED.clear()
    bases = make_stub(spack_one)
    start = len(RECORDED)
    recipe = load(os.path.join(repo, "packaging", "spack", "package.py"), "qarac_mt_recipe")
    cls = getattr(recipe, "QaracMt", None)
    if cls is None:
        return [f"{layout}: package.py defines no class QaracMt (Spack's name for qarac-mt)"]
    for base in ("CMakePackage", "CudaPackage"):
        if not issubclass(cls, bases[base]):
            problems.append(f"{layout}: QaracMt does not derive from {base}")
    mine = RECORDED[start:]
    depends = {args[0]: kwargs for name, args, kwargs in mine if name == "depends_on"}
    for needed in ("mpi", "hdf5", "openblas", "libcsv", "nlohmann-json", "zlib-api", "googletest"):
        if not any(d == needed or d.startswith(needed + "@") for d in depends):
            problems.append(f"{layout}: no depends_on('{needed}...')")
    if "mpi" not in depends:
        problems.append(f"{layout}: the MPI must be the virtual 'mpi' (any provider), not one library")
    if not any(d.startswith("boost") and "+program_options" in d for d in depends):
        problems.append(f"{layout}: boost without +program_options")
    if not any(d.startswith("cmake@3.25") for d in depends):
        problems.append(f"{layout}: no cmake@3.25: build dependency")
    if depends.get("nccl", {}).get("when") != "+cuda":
        problems.append(f"{layout}: nccl is not a dependency when +cuda")
    conflicts = {args[0]: kwargs.get("when") for name, args, kwargs in mine if name == "conflicts"}
    for arch in ("50", "60", "70", "75", "none"):
        if conflicts.get(f"cuda_arch={arch}") != "+cuda":
            problems.append(f"{layout}: cuda_arch={arch} is not a conflict with +cuda")
    for arch in ("80", "90", "90a"):
        if f"cuda_arch={arch}" in conflicts:
            problems.append(f"{layout}: cuda_arch={arch} conflicts, though the kernels run there")
    if not any(name == "version" for name, _, _ in mine):
        problems.append(f"{layout}: no version()")

    package = cls()
    with_cuda = package_args(package, Spec(True, ("90", "80")))
    for expected in ("-DQARAC_CUDA=ON", "-DQARAC_CUDA_ARCHS=90;80", "-DNCCL_ROOT=/opt/nccl",
                     "-DMPI_C_COMPILER=/opt/mpi/bin/mpicc", "-DQARAC_TESTS=OFF"):
        if expected not in with_cuda:
            problems.append(f"{layout}: +cuda cuda_arch=90,80: {expected} not in cmake_args() {with_cuda}")
    without = package_args(package, Spec(False, ("none",)))
    if "-DQARAC_CUDA=OFF" not in without or any("CUDA_ARCHS" in a or "NCCL" in a for a in without):
        problems.append(f"{layout}: ~cuda: cmake_args() {without}")
    package.run_tests = True
    if "-DQARAC_TESTS=ON" not in package_args(package, Spec(False, ("none",))):
        problems.append(f"{layout}: spack install --test=root does not build the tests")

    libcsv = getattr(load(os.path.join(repo, "packaging", "spack", "libcsv.py"), "libcsv_recipe"), "Libcsv", None)
    if libcsv is None or not issubclass(libcsv, bases["AutotoolsPackage"]):
        problems.append(f"{layout}: libcsv.py defines no AutotoolsPackage Libcsv")
    versions = [(args, kwargs) for name, args, kwargs in RECORDED if name == "version" and args[0] == "3.0.3"]
    if not versions or not re.fullmatch(r"[0-9a-f]{64}", versions[0][1].get("sha256", "")):
        problems.append(f"{layout}: libcsv 3.0.3 has no sha256")
    return problems


def package_args(package, spec):
    package.spec = spec
    return package.cmake_args()


def main():
    repo = sys.argv[1]
    problems = check(repo, spack_one=False) + check(repo, spack_one=True)
    for p in problems:
        print(f"packaging/spack: {p}")
    if problems:
        return 1
    print("check_spack_recipe: package.py and libcsv.py import under the stub of Spack 0.x's and 1.0's "
          "package API; variants +cuda and cuda_arch (>= 80), the virtual mpi, cmake_args() checked; "
          "not built (no spack here)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
