// Sealed HDF5 files. HDF5 parses a file's metadata before any check of ours can run, and damage
// there can crash the library rather than fail it (a flipped bit in a link table made H5Lvisit
// free an invalid pointer). So a finished file is sealed: its first kHdf5SealBytes, a user block
// that HDF5 reserves and leaves to its writer, hold
//   "QARAC-MT sealed HDF5\nhash64 <16 hex digits>\nbytes <decimal>\n" (NUL-padded)
// with hash64 (core/hash.h) of every byte after the block and the file's size, and the reader
// checks them, and that the rest of the block is NULs, before HDF5 opens the file. Checking reads
// the file once more (hash64 runs near memory speed), once per process: a file found whole is not
// hashed again while its identity, size and time of last change stay the same.
#pragma once

#include <cstddef>
#include <string>

namespace qarac {

// The user block a sealed file is created with (H5Pset_userblock): the seal's room.
constexpr size_t kHdf5SealBytes = 512;

// Seals the finished, closed file `path`, created with a user block of kHdf5SealBytes.
// InputError "<path>: sealing the file: <reason>" when it cannot (a full disk, an I/O error).
void seal_hdf5_file(const std::string& path);

// Checks the seal of `path` before HDF5 opens it; `noun` names what the file should be
// ("checkpoint", "task stream"). Returns true for a sealed file whose bytes match, false for a
// file that starts with the HDF5 signature (written before seals: HDF5 reads it unchecked).
// Otherwise a one-line InputError "<path>: <why>": not a <noun> (a directory, a device, FIFO or
// socket: never waited on), not sealed (zeros: "incomplete <noun>", its write did not finish), not
// a <noun>, a damaged seal, another size, another checksum, or a failed read. `remedy`, if given,
// is said in the messages of a damaged or incomplete file ("rerun qarac-prep").
bool check_hdf5_seal(const std::string& path, const char* noun, const char* remedy = nullptr);

}  // namespace qarac
