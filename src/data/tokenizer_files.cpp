// Loading a tokenizer: vocab.json + merges.txt (what RobertaTokenizer reads) or one Hugging Face
// tokenizer.json, read into the tables of tokenizer_tables.h with every problem reported as an
// InputError naming the file and the line or JSON key. The settings checked follow what Hugging
// Face's serialisation writes (model BPE, pre-tokenizer and decoder ByteLevel, post-processors).
#include "data/tokenizer.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "core/atomic_file.h"
#include "data/json_brief.h"
#include "data/tokenizer_tables.h"

namespace qarac::data {
namespace {

using nlohmann::json;
using detail::AddedToken;
using detail::fail;
using detail::quote;
using detail::TokenizerTables;

// The largest tokenizer file taken: public tokenizer.json files are a few MB (XLM-R's 17 MB), and
// the file is read whole and parsed into a JSON tree several times its size.
constexpr uintmax_t kMaxFileBytes = uintmax_t{256} << 20;

std::string read_file(const std::string& path) {
  check_input_file(path);
  std::ifstream in(path, std::ios::binary);
  std::error_code ec;
  if (!in) fail(path, "cannot open (", std::strerror(errno), ")");
  const uintmax_t bytes = std::filesystem::file_size(path, ec);
  if (!ec && bytes > kMaxFileBytes)
    fail(path, bytes, " bytes, more than the ", kMaxFileBytes >> 20, " MiB a tokenizer file is taken with");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail(path, "cannot read (", std::strerror(errno), ")");
  return text;
}

json parse_json(const std::string& path) {
  const std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    // e.what() is "[json.exception.parse_error.101] parse error at line L, column C: ...".
    const std::string what = e.what();
    const size_t bracket = what.find("] ");
    fail(path, "malformed JSON: ", bracket == std::string::npos ? what : what.substr(bracket + 2));
  }
}

// JSON access that reports what is wrong as "<file>: <key path>: <problem>".
const json* find_member(const json& object, const char* key) {
  const auto it = object.find(key);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

const json& member(const json& object, const char* key, const std::string& where) {
  const json* value = find_member(object, key);
  if (value == nullptr) fail(where, "missing \"", key, "\"");
  return *value;
}

bool bool_member(const json& object, const char* key, bool otherwise, const std::string& where) {
  const json* value = find_member(object, key);
  if (value == nullptr) return otherwise;
  if (!value->is_boolean()) fail(where, key, ": expected true or false, got ", json_brief(*value));
  return value->get<bool>();
}

std::string string_member(const json& object, const char* key, const std::string& where) {
  const json& value = member(object, key, where);
  if (!value.is_string()) fail(where, key, ": expected a string, got ", json_brief(value));
  return value.get<std::string>();
}

int32_t id_value(const json& value, const std::string& where) {
  if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
      value.get<int64_t>() >= TokenizerTables::kMaxId)
    fail(where, "expected an id, an integer in [0, ", TokenizerTables::kMaxId, "), got ",
         json_brief(value));
  return static_cast<int32_t>(value.get<int64_t>());
}

const std::string& type_of(const json& object, const std::string& where) {
  if (!object.is_object()) fail(where, "expected an object, got ", json_brief(object));
  const json& type = member(object, "type", where);
  if (!type.is_string()) fail(where, "type: expected a string, got ", json_brief(type));
  return type.get_ref<const std::string&>();
}

void read_vocab(const json& object, const std::string& where, TokenizerTables& t) {
  if (!object.is_object())
    fail(where, "expected an object of token: id, got a JSON ", object.type_name());
  t.vocab.reserve(object.size());
  for (const auto& [token, id] : object.items())
    t.vocab.emplace(token, id_value(id, where + ": token " + quote(token)));
}

// Appends merge (left, right) at the next rank; Hugging Face refuses merges of tokens, or into a
// token, that the vocabulary lacks.
void add_merge(const std::string& left, const std::string& right, const std::string& where,
               TokenizerTables& t) {
  const auto id = [&](const std::string& token) {
    const auto it = t.vocab.find(token);
    if (it == t.vocab.end()) fail(where, "merge token ", quote(token), " is not in the vocabulary");
    return it->second;
  };
  t.merge_list.push_back({id(left), id(right), id(left + right)});
}

// "a b": exactly two tokens around one space (byte-level tokens never hold a space).
void add_merge_line(std::string_view line, const std::string& where, TokenizerTables& t) {
  const size_t space = line.find(' ');
  if (space == std::string_view::npos || space == 0 || space + 1 == line.size() ||
      line.find(' ', space + 1) != std::string_view::npos)
    fail(where, "expected two tokens separated by one space, got ", quote(line));
  add_merge(std::string(line.substr(0, space)), std::string(line.substr(space + 1)), where, t);
}

void read_merges_txt(const std::string& path, TokenizerTables& t) {
  const std::string text = read_file(path);
  size_t line_number = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.substr(0, 8) == "#version") continue;
    add_merge_line(line, ::qarac::detail::concat(path, ":", line_number), t);
  }
}

// tokenizer.json's post_processor: what it puts around a single text.
void read_post_processor(const json& p, const std::string& where, TokenizerTables& t) {
  const std::string& type = type_of(p, where);
  std::vector<int32_t> prefix, suffix;
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    const auto token_id = [&](const char* key) {
      const json& pair = member(p, key, where);
      if (!pair.is_array() || pair.size() != 2)
        fail(where, key, ": expected [token, id], got ", json_brief(pair));
      return id_value(pair[1], where + ": " + key);
    };
    prefix = {token_id("cls")};
    suffix = {token_id("sep")};
  } else if (type == "TemplateProcessing") {
    const json& single = member(p, "single", where);
    const json& special_tokens = member(p, "special_tokens", where);
    if (!single.is_array()) fail(where, "single: expected an array, got ", json_brief(single));
    bool seen_sequence = false;
    for (const json& piece : single) {
      if (find_member(piece, "Sequence") != nullptr) {
        seen_sequence = true;
        continue;
      }
      const json* special = find_member(piece, "SpecialToken");
      if (special == nullptr) fail(where, "single: unknown piece ", json_brief(piece));
      const std::string name = string_member(*special, "id", where + ": single");
      const json* entry = find_member(special_tokens, name.c_str());
      if (entry == nullptr) fail(where, "special_tokens: no entry for ", quote(name));
      // A named string, not a temporary: GCC 13 and later warn that a reference returned by a
      // call given a temporary may dangle (-Wdangling-reference, an error under QARAC_WERROR).
      const std::string context = where + ": special_tokens";
      const json& ids = member(*entry, "ids", context);
      if (!ids.is_array()) fail(where, "special_tokens: ids: expected an array, got ", json_brief(ids));
      for (const json& id : ids) (seen_sequence ? suffix : prefix).push_back(id_value(id, context));
    }
  } else if (type == "Sequence") {
    const json& processors = member(p, "processors", where);
    if (!processors.is_array())
      fail(where, "processors: expected an array, got ", json_brief(processors));
    for (const json& inner : processors) read_post_processor(inner, where, t);
    return;
  } else if (type != "ByteLevel") {
    fail(where, "unsupported post_processor type ", quote(type));
  }
  // Each processor of a Sequence wraps what the ones before it made.
  t.prefix.insert(t.prefix.begin(), prefix.begin(), prefix.end());
  t.suffix.insert(t.suffix.end(), suffix.begin(), suffix.end());
}

void read_model(const json& model, const std::string& path, TokenizerTables& t) {
  const std::string where = path + ": model";
  if (!model.is_object()) fail(where, "expected an object, got ", json_brief(model));
  if (const json* type = find_member(model, "type"); type != nullptr && *type != "BPE")
    fail(where, "type: only BPE models are supported, got ", json_brief(*type));
  if (const json* dropout = find_member(model, "dropout");
      dropout != nullptr && !(dropout->is_number() && dropout->get<double>() == 0.0))
    fail(where, "dropout: BPE dropout is not supported, got ", json_brief(*dropout));
  if (bool_member(model, "byte_fallback", false, where))
    fail(where, "byte_fallback: not supported by a byte-level tokenizer");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json* affix = find_member(model, key);
    if (affix != nullptr && *affix != "") fail(where, key, ": not supported, got ", json_brief(*affix));
  }
  t.fuse_unk = bool_member(model, "fuse_unk", false, where);
  t.ignore_merges = bool_member(model, "ignore_merges", false, where);

  read_vocab(member(model, "vocab", where), where + ".vocab", t);
  if (find_member(model, "unk_token") != nullptr) {
    const std::string unk = string_member(model, "unk_token", where);
    const auto it = t.vocab.find(unk);
    if (it == t.vocab.end()) fail(where, "unk_token ", quote(unk), " is not in the vocabulary");
    t.model_unk = it->second;
  }

  const json& merges = member(model, "merges", where);
  if (!merges.is_array()) fail(where, "merges: expected an array, got ", json_brief(merges));
  t.merge_list.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string at = ::qarac::detail::concat(where, ".merges[", i, "]");
    const json& m = merges[i];
    // Written as "a b" before tokenizers 0.20, as ["a", "b"] since.
    if (m.is_string()) {
      add_merge_line(m.get_ref<const std::string&>(), at, t);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      add_merge(m[0].get<std::string>(), m[1].get<std::string>(), at, t);
    } else {
      fail(at, "expected \"a b\" or [\"a\", \"b\"], got ", json_brief(m));
    }
  }
}

void read_added_tokens(const json& list, const std::string& path, TokenizerTables& t) {
  if (!list.is_array()) fail(path, "added_tokens: expected an array, got ", json_brief(list));
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string where = ::qarac::detail::concat(path, ": added_tokens[", i, "]");
    const json& entry = list[i];
    if (!entry.is_object()) fail(where, "expected an object, got ", json_brief(entry));
    AddedToken token;
    token.content = string_member(entry, "content", where);
    token.id = id_value(member(entry, "id", where), where + ": id");
    token.single_word = bool_member(entry, "single_word", false, where);
    token.lstrip = bool_member(entry, "lstrip", false, where);
    token.rstrip = bool_member(entry, "rstrip", false, where);
    token.normalized = bool_member(entry, "normalized", true, where);
    token.special = bool_member(entry, "special", false, where);
    // Hugging Face ignores empty added tokens.
    if (!token.content.empty()) t.added.push_back(std::move(token));
  }
}

constexpr const char* kResave =
    "save the tokenizer with transformers for a tokenizer.json (AutoTokenizer.from_pretrained(dir).save_pretrained(dir))";

// A JSON object from `path`; an empty one where there is no such file.
json object_file_or_empty(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return json::object();
  json value = parse_json(path.string());
  if (!value.is_object()) fail(path.string(), "expected a JSON object, got a JSON ", value.type_name());
  return value;
}

// transformers' special-token attributes, with RoBERTa's token for each.
constexpr std::pair<const char*, const char*> kSpecialAttributes[] = {
    {"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}, {"sep_token", "</s>"},
    {"pad_token", "<pad>"}, {"cls_token", "<s>"}, {"mask_token", "<mask>"}};

// The token a special-token attribute names: a string, or an AddedToken object's content.
std::string token_content(const json& value, const std::string& where) {
  if (value.is_string()) return value.get<std::string>();
  if (!value.is_object()) fail(where, "expected a string or an object, got ", json_brief(value));
  return string_member(value, "content", where);
}

// What tokenizer_config.json (`config`) and special_tokens_map.json (`map`) say beside vocab.json
// and merges.txt: add_prefix_space, and each special token's spacing as transformers takes it:
// from its added_tokens_decoder entry, else from special_tokens_map.json's attribute, else from
// tokenizer_config.json's, where the attribute is an AddedToken object ("mask_token": {"content":
// "<mask>", "lstrip": ...}), with AddedToken's defaults (no stripping) for a flag left out.
TokenizerOptions config_options(const json& config, const std::string& config_path, const json& map,
                                const std::string& map_path) {
  TokenizerOptions options;
  options.add_prefix_space = bool_member(config, "add_prefix_space", false, config_path);
  const auto read_spacing = [&](const json& entry, const std::string& content, const std::string& where) {
    options.special_spacing[content] = {bool_member(entry, "single_word", false, where),
                                        bool_member(entry, "lstrip", false, where),
                                        bool_member(entry, "rstrip", false, where)};
  };
  // Another token than RoBERTa's in an attribute, or any additional special token, would be added
  // to the vocabulary or split out there.
  for (const auto& [file, path] : {std::pair<const json&, const std::string&>{config, config_path}, {map, map_path}}) {
    for (const auto& [attribute, roberta] : kSpecialAttributes) {
      const json* value = find_member(file, attribute);
      if (!value) continue;
      const std::string where = path + ": " + attribute;
      const std::string content = token_content(*value, where);
      if (content != roberta) fail(where, quote(content), " is not RoBERTa's ", roberta, ": ", kResave);
      if (value->is_object()) read_spacing(*value, content, where);
    }
    const json* additional = find_member(file, "additional_special_tokens");
    if (additional && !(additional->is_array() && additional->empty()))
      fail(path, "additional_special_tokens ", json_brief(*additional), " are not read: ", kResave);
  }
  if (const json* decoder = find_member(config, "added_tokens_decoder")) {
    if (!decoder->is_object())
      fail(config_path, "added_tokens_decoder: expected an object, got ", json_brief(*decoder));
    for (const auto& [id, entry] : decoder->items()) {
      const std::string where = config_path + ": added_tokens_decoder: " + id;
      if (!entry.is_object()) fail(where, "expected an object, got ", json_brief(entry));
      read_spacing(entry, string_member(entry, "content", where), where);
    }
  }
  return options;
}

// What tokenizer_config.json (`config`) and special_tokens_map.json (`map`) say of the added tokens
// of the tokenizer.json beside them, as transformers takes it: an added_tokens_decoder entry sets
// its token's lstrip, rstrip and single_word over tokenizer.json's (attributes given as objects do
// not). A token they name that tokenizer.json does not add, transformers adds or splits out:
// refused.
void apply_folder_config(TokenizerTables& t, const json& config, const std::string& config_path, const json& map,
                         const std::string& map_path) {
  const auto added = [&](const std::string& content) -> AddedToken* {
    for (AddedToken& a : t.added)
      if (a.content == content) return &a;
    return nullptr;
  };
  for (const auto& [file, path] : {std::pair<const json&, const std::string&>{config, config_path}, {map, map_path}}) {
    std::vector<std::pair<std::string, const json*>> named;  // (where, value)
    for (const auto& attribute : kSpecialAttributes)
      if (const json* value = find_member(file, attribute.first)) named.emplace_back(path + ": " + attribute.first, value);
    if (const json* additional = find_member(file, "additional_special_tokens")) {
      const std::string where = path + ": additional_special_tokens";
      if (!additional->is_array()) fail(where, "expected an array, got ", json_brief(*additional));
      for (size_t i = 0; i < additional->size(); ++i)
        named.emplace_back(::qarac::detail::concat(where, "[", i, "]"), &(*additional)[i]);
    }
    for (const auto& [where, value] : named) {
      const std::string content = token_content(*value, where);
      if (!added(content)) fail(where, quote(content), " is not an added token of tokenizer.json: ", kResave);
    }
  }
  const json* decoder = find_member(config, "added_tokens_decoder");
  if (!decoder) return;
  if (!decoder->is_object()) fail(config_path, "added_tokens_decoder: expected an object, got ", json_brief(*decoder));
  for (const auto& [id, entry] : decoder->items()) {
    const std::string where = config_path + ": added_tokens_decoder: " + id;
    if (!entry.is_object()) fail(where, "expected an object, got ", json_brief(entry));
    const std::string content = string_member(entry, "content", where);
    AddedToken* token = added(content);
    if (!token || std::to_string(token->id) != id)
      fail(where, "token ", quote(content), " is not an added token of tokenizer.json at this id: ", kResave);
    token->single_word = bool_member(entry, "single_word", false, where);
    token->lstrip = bool_member(entry, "lstrip", false, where);
    token->rstrip = bool_member(entry, "rstrip", false, where);
  }
}

}  // namespace

Tokenizer Tokenizer::from_files(const std::string& vocab_json, const std::string& merges_txt,
                                const TokenizerOptions& options) {
  auto t = std::make_shared<TokenizerTables>();
  const json vocab = parse_json(vocab_json);
  read_vocab(vocab, vocab_json, *t);
  read_merges_txt(merges_txt, *t);
  // RobertaTokenizerFast's special tokens: ids from the vocabulary, <mask> taking the
  // whitespace before it ("a <mask>" is "a", "<mask>") unless the options say otherwise.
  for (const char* name : {"<s>", "<pad>", "</s>", "<unk>", "<mask>"}) {
    const auto it = t->vocab.find(name);
    if (it == t->vocab.end())
      fail(vocab_json, "no token ", name, ": QARAC needs RoBERTa's <s> <pad> </s> <unk> <mask>");
    AddedToken token;
    token.content = name;
    token.id = it->second;
    TokenizerOptions::Spacing spacing;
    spacing.lstrip = token.content == "<mask>";
    if (const auto given = options.special_spacing.find(name); given != options.special_spacing.end())
      spacing = given->second;
    token.single_word = spacing.single_word;
    token.lstrip = spacing.lstrip;
    token.rstrip = spacing.rstrip;
    token.normalized = false;
    token.special = true;
    t->added.push_back(std::move(token));
  }
  t->add_prefix_space = options.add_prefix_space;
  t->prefix = {t->vocab.at("<s>")};
  t->suffix = {t->vocab.at("</s>")};
  t->finish(vocab_json);
  return Tokenizer(std::move(t));
}

namespace {

// The tables of a tokenizer.json, before TokenizerTables::finish.
std::shared_ptr<TokenizerTables> json_tables(const std::string& path) {
  const json root = parse_json(path);
  if (!root.is_object()) fail(path, "expected a JSON object, got a JSON ", root.type_name());
  auto t = std::make_shared<TokenizerTables>();
  read_model(member(root, "model", path), path, *t);

  if (const json* normalizer = find_member(root, "normalizer"))
    fail(path, "normalizer: not supported (RoBERTa has none), got ", json_brief(*normalizer));
  const json& pre = member(root, "pre_tokenizer", path);
  if (type_of(pre, path + ": pre_tokenizer") != "ByteLevel")
    fail(path, "pre_tokenizer: only ByteLevel is supported, got ", json_brief(pre));
  // Serde defaults of Hugging Face's ByteLevel: add_prefix_space true, use_regex true.
  t->add_prefix_space = bool_member(pre, "add_prefix_space", true, path + ": pre_tokenizer");
  t->use_regex = bool_member(pre, "use_regex", true, path + ": pre_tokenizer");
  const json& decoder = member(root, "decoder", path);
  if (type_of(decoder, path + ": decoder") != "ByteLevel")
    fail(path, "decoder: only ByteLevel is supported, got ", json_brief(decoder));
  if (const json* post = find_member(root, "post_processor"))
    read_post_processor(*post, path + ": post_processor", *t);
  if (const json* added = find_member(root, "added_tokens")) read_added_tokens(*added, path, *t);
  return t;
}

}  // namespace

Tokenizer Tokenizer::from_json(const std::string& tokenizer_json) {
  auto t = json_tables(tokenizer_json);
  t->finish(tokenizer_json);
  return Tokenizer(std::move(t));
}

// A folder that cannot be searched reads as holding nothing: the error names the folder.
Tokenizer Tokenizer::from_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  // transformers also reads tokenizer_config.json and special_tokens_map.json (and, beside
  // vocab.json and merges.txt, added_tokens.json); a tokenizer that ignored them would encode other
  // ids than AutoTokenizer from the same folder.
  const std::string config_path = (fs::path(dir) / "tokenizer_config.json").string();
  const std::string map_path = (fs::path(dir) / "special_tokens_map.json").string();
  const fs::path json_path = fs::path(dir) / "tokenizer.json";
  if (fs::exists(json_path, ec)) {
    auto t = json_tables(json_path.string());
    apply_folder_config(*t, object_file_or_empty(config_path), config_path, object_file_or_empty(map_path), map_path);
    t->finish(json_path.string());
    return Tokenizer(std::move(t));
  }
  const fs::path vocab = fs::path(dir) / "vocab.json";
  const fs::path merges = fs::path(dir) / "merges.txt";
  if (!fs::exists(vocab, ec) && !fs::exists(merges, ec))
    fail(dir, "no tokenizer.json, nor vocab.json and merges.txt");
  const fs::path added = fs::path(dir) / "added_tokens.json";
  if (fs::exists(added, ec)) fail(added.string(), "added tokens are not read beside vocab.json and merges.txt: ", kResave);
  const json config = object_file_or_empty(config_path);
  Tokenizer tokenizer = from_files(vocab.string(), merges.string(),
                                   config_options(config, config_path, object_file_or_empty(map_path), map_path));
  // Its added_tokens_decoder may list RoBERTa's special tokens at their vocabulary ids, nothing else.
  if (const json* decoder = find_member(config, "added_tokens_decoder"))
    for (const auto& [id, entry] : decoder->items()) {  // config_options checked their form
      const std::string content = entry.at("content").get<std::string>();
      const int32_t known = tokenizer.token_id(content);
      if (known < 0 || !tokenizer.is_special(known) || std::to_string(known) != id)
        fail(config_path, "added_tokens_decoder: token ", quote(content), " at id ", id,
             " is not a special token of vocab.json at its id: ", kResave);
    }
  return tokenizer;
}

bool Tokenizer::found_in(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path d(dir);
  return !dir.empty() && (fs::is_regular_file(d / "tokenizer.json", ec) ||
                          (fs::is_regular_file(d / "vocab.json", ec) && fs::is_regular_file(d / "merges.txt", ec)));
}

}  // namespace qarac::data
