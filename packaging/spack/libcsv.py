# Spack recipe of libcsv, which QARAC-MT reads CSV datasets with and Spack's builtin repository
# lacks (packaging/README.md puts it beside qarac-mt's recipe as packages/libcsv/package.py).

from spack.package import *  # noqa: F401,F403

try:  # Spack 1.0 moved the build systems into its builtin package repository
    from spack_repo.builtin.build_systems.autotools import AutotoolsPackage
except ImportError:  # Spack 0.x: it comes with spack.package
    pass


class Libcsv(AutotoolsPackage):
    """A small, fast CSV parser and writer in ANSI C."""

    homepage = "https://sourceforge.net/projects/libcsv/"
    url = "https://downloads.sourceforge.net/project/libcsv/libcsv/libcsv-3.0.3/libcsv-3.0.3.tar.gz"

    license("LGPL-2.1-or-later")

    version("3.0.3", sha256="d9c0431cb803ceb9896ce74f683e6e5a0954e96ae1d9e4028d6e0f967bebd7e4")

    depends_on("c", type="build")
