# Spack recipe of QARAC-MT (packaging/README.md: how to use it from a checkout).
#
#   spack install qarac-mt +cuda cuda_arch=90 ^openmpi      # any MPI provider: ^mpich,
#   spack install qarac-mt ~cuda ^mpich                      # ^intel-oneapi-mpi, ^cray-mpich, ...
#
# The MPI is Spack's virtual `mpi`, so the site's MPI (an external in packages.yaml) is the one
# the programs are built with and that srun or mpirun must launch.

from spack.package import *  # noqa: F401,F403 (Spack's package API: directives, build systems)

try:  # Spack 1.0 moved the build systems into its builtin package repository
    from spack_repo.builtin.build_systems.cmake import CMakePackage
    from spack_repo.builtin.build_systems.cuda import CudaPackage
except ImportError:  # Spack 0.x: they come with spack.package
    pass


class QaracMt(CMakePackage, CudaPackage):
    """Multi-task fine-tuning of RoBERTa models on clusters: C++17 and CUDA, one MPI rank per GPU,
    NCCL gradient all-reduce (qarac-train, qarac-prep, qarac-parity, qarac-bench)."""

    # The sources come from a checkout (`spack develop --path CHECKOUT qarac-mt@=0.1.0`,
    # packaging/README.md); with a reachable clone, add `git = "<its URL>"` and
    # `version("main", branch="main")` to fetch it instead.
    version("0.1.0")

    # +cuda and cuda_arch come from CudaPackage. The kernels use mma.sync and cp.async: sm_80 and
    # newer (A100, H100, H200).
    for arch in CudaPackage.cuda_arch_values:
        if arch.isdigit() and int(arch) < 80:
            conflicts(f"cuda_arch={arch}", when="+cuda", msg="QARAC-MT's kernels need sm_80 or newer")
    conflicts("cuda_arch=none", when="+cuda", msg="name the GPUs' architecture, e.g. cuda_arch=90 (H100)")

    depends_on("cmake@3.25:", type="build")
    depends_on("c", type="build")
    depends_on("cxx", type="build")
    depends_on("mpi")
    depends_on("hdf5")
    depends_on("boost@1.71: +program_options")
    depends_on("openblas")  # CMakeLists.txt asks for OpenBLAS's BLAS and its cblas.h
    depends_on("nlohmann-json@3.9:")
    depends_on("libcsv")
    depends_on("zlib-api")  # qarac-prep deflates task-stream chunks itself
    depends_on("cuda@12:", when="+cuda")
    depends_on("nccl", when="+cuda")
    depends_on("googletest", type="test")
    depends_on("python@3:", type="test")

    def cmake_args(self):
        spec = self.spec
        args = [
            self.define("QARAC_CUDA", "ON" if spec.satisfies("+cuda") else "OFF"),
            self.define("QARAC_TESTS", self.run_tests),
            # The provider's own compiler wrapper and launcher, not whatever MPI is on PATH.
            self.define("MPI_C_COMPILER", spec["mpi"].mpicc),
        ]
        if spec.satisfies("+cuda"):
            args.append(self.define("QARAC_CUDA_ARCHS", ";".join(spec.variants["cuda_arch"].value)))
            args.append(self.define("NCCL_ROOT", spec["nccl"].prefix))
        return args

    @run_after("install")
    @on_package_attributes(run_tests=True)
    def check_version(self):
        """The installed programs start and name their libraries (no GPU or MPI launch needed)."""
        for program in ("qarac-train", "qarac-prep", "qarac-parity", "qarac-bench", "qarac-embed", "qarac-generate",
                        "qarac-eval"):
            Executable(join_path(self.prefix.bin, program))("--version")
