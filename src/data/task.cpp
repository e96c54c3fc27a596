#include "data/task.h"

#include "core/error.h"

namespace qarac::data {
namespace {

struct TaskInfo {
  Task task;
  const char* name;
  const char* short_name;
};
constexpr TaskInfo kTasks[kTaskCount] = {
    {Task::encode_decode, "encode_decode", "ed"},
    {Task::question_answering, "question_answering", "qa"},
    {Task::reasoning, "reasoning", "rs"},
    {Task::consistency, "consistency", "cs"},
    {Task::masked_lm, "masked_lm", "mlm"},
};

}  // namespace

const char* task_name(Task task) { return kTasks[static_cast<int>(task)].name; }
const char* task_short_name(Task task) { return kTasks[static_cast<int>(task)].short_name; }

Task task_from_name(const std::string& name) {
  for (const TaskInfo& t : kTasks)
    if (name == t.name || name == t.short_name) return t.task;
  throw InputError(detail::concat("unknown task '", name,
                                  "' (expected encode_decode|ed, question_answering|qa, "
                                  "reasoning|rs, consistency|cs, masked_lm|mlm)"));
}

const std::vector<std::string>& task_fields(Task task) {
  static const std::vector<std::string> kFields[kTaskCount] = {
      {"text"},
      {"question", "answer"},
      {"premise0", "premise1", "conclusion"},
      {"statement0", "statement1"},
      {"text"},
  };
  return kFields[static_cast<int>(task)];
}

Task stream_task(Task task) { return task == Task::masked_lm ? Task::encode_decode : task; }

bool task_has_label(Task task) { return task == Task::consistency; }

}  // namespace qarac::data
