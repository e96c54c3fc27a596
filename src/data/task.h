// The four QARAC task streams (docs/design.md §3) and their names: the vocabulary shared by the
// readers, the task-stream files, the loader, the task plan and the configuration.
#pragma once

#include <string>
#include <vector>

namespace qarac::data {

enum class Task : int { encode_decode = 0, question_answering = 1, reasoning = 2, consistency = 3 };
constexpr int kTaskCount = 4;

const char* task_name(Task task);        // "encode_decode", ...
const char* task_short_name(Task task);  // "ed", "qa", "rs", "cs" (as in --parallel.tasks)
// Either name; InputError listing the valid names otherwise.
Task task_from_name(const std::string& name);
// The text fields of one example, in order; they name the field groups of a task-stream file.
const std::vector<std::string>& task_fields(Task task);
// Only consistency carries a label: +1 entailment, 0 neutral, -1 contradiction.
bool task_has_label(Task task);

}  // namespace qarac::data
