// The tasks (docs/design.md §3) and their names: the vocabulary shared by the readers, the
// task-stream files, the loader, the task plan and the configuration. The four QARAC objectives
// each read a stream of their own; the fifth, masked_lm (rehearsal, --task.mlm.weight), is masked
// language modelling through the answer encoder's base on the text stream of encode_decode, in an
// order, global batch and cursor of its own. It runs only when its weight is positive.
#pragma once

#include <string>
#include <vector>

namespace qarac::data {

enum class Task : int { encode_decode = 0, question_answering = 1, reasoning = 2, consistency = 3, masked_lm = 4 };
constexpr int kTaskCount = 5;
constexpr int kQaracTaskCount = 4;  // the four QARAC objectives, Task values 0..3; masked_lm is optional

const char* task_name(Task task);        // "encode_decode", ..., "masked_lm"
const char* task_short_name(Task task);  // "ed", "qa", "rs", "cs", "mlm" (as in --parallel.tasks)
// Either name; InputError listing the valid names otherwise.
Task task_from_name(const std::string& name);
// The task whose stream file (<task_name>.h5) `task` reads: itself, and encode_decode for masked_lm.
Task stream_task(Task task);
// The text fields of one example, in order; they name the field groups of a task-stream file.
const std::vector<std::string>& task_fields(Task task);
// Only consistency carries a label: +1 entailment, 0 neutral, -1 contradiction.
bool task_has_label(Task task);

}  // namespace qarac::data
