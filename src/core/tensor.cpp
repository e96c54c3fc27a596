#include "core/tensor.h"

#include <cstring>
#include <sstream>

namespace qarac {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

namespace {
Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t stride = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= shape[i];
  }
  return strides;
}

template <class Dst, class Src>
void convert(Dst* dst, const Src* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Dst>(static_cast<double>(src[i]));
}

template <class Src>
void convert_from(const Tensor& src, Tensor& dst) {
  const Src* s = src.data<Src>();
  const int64_t n = src.numel();
  switch (dst.dtype()) {
    case DType::f32: convert(dst.data<float>(), s, n); break;
    case DType::f64: convert(dst.data<double>(), s, n); break;
    case DType::bf16: {
      bf16* d = dst.data<bf16>();
      for (int64_t i = 0; i < n; ++i) d[i] = bf16(static_cast<float>(s[i]));
      break;
    }
    case DType::i32: convert(dst.data<int32_t>(), s, n); break;
    case DType::i64: convert(dst.data<int64_t>(), s, n); break;
  }
}
}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) QARAC_CHECK(d >= 0, "negative dimension in shape ", shape_str(shape));
  Tensor t;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  t.buffer_ = std::make_shared<Buffer>(static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype), device);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero_();
  return t;
}

int64_t Tensor::size(int d) const {
  const int n = dim();
  const int i = d < 0 ? d + n : d;
  QARAC_CHECK(i >= 0 && i < n, "dimension ", d, " out of range for ", str());
  return shape_[i];
}

bool Tensor::is_contiguous() const { return strides_ == contiguous_strides(shape_); }

void* Tensor::raw() const {
  QARAC_CHECK(defined(), "access to an undefined tensor");
  return static_cast<char*>(buffer_->data()) + offset_ * dtype_size(dtype_);
}

Tensor Tensor::reshape(const Shape& shape) const {
  QARAC_CHECK(is_contiguous(), "reshape of a non-contiguous tensor ", str());
  Shape s = shape;
  int64_t known = 1;
  int infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      QARAC_CHECK(infer < 0, "reshape: more than one -1 in ", shape_str(shape));
      infer = static_cast<int>(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) {
    QARAC_CHECK(known > 0 && numel() % known == 0, "reshape of ", str(), " to ", shape_str(shape));
    s[infer] = numel() / known;
  }
  QARAC_CHECK(shape_numel(s) == numel(), "reshape of ", str(), " to ", shape_str(shape));
  Tensor t = *this;
  t.shape_ = s;
  t.strides_ = contiguous_strides(s);
  return t;
}

Tensor Tensor::slice(int d, int64_t begin, int64_t end) const {
  const int i = d < 0 ? d + dim() : d;
  QARAC_CHECK(i >= 0 && i < dim(), "slice: dimension ", d, " out of range for ", str());
  QARAC_CHECK(0 <= begin && begin <= end && end <= shape_[i], "slice [", begin, ", ", end,
              ") of dimension ", i, " out of range for ", str());
  Tensor t = *this;
  t.offset_ += static_cast<size_t>(begin * strides_[i]);
  t.shape_[i] = end - begin;
  return t;
}

Tensor Tensor::select(int64_t index) const {
  Tensor t = slice(0, index, index + 1);
  t.shape_.erase(t.shape_.begin());
  t.strides_.erase(t.strides_.begin());
  return t;
}

int64_t Tensor::capacity() const {
  if (!buffer_) return 0;
  return static_cast<int64_t>(buffer_->bytes() / dtype_size(dtype_) - offset_);
}

Tensor Tensor::resized(const Shape& shape) const {
  QARAC_CHECK(shape_numel(shape) <= capacity(), "resized: ", shape_str(shape), " does not fit the buffer of ",
              str(), " (", capacity(), " elements)");
  Tensor t = *this;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

bool Tensor::follows(const Tensor& prev) const {
  return buffer_ && buffer_ == prev.buffer_ && dtype_ == prev.dtype_ && is_contiguous() &&
         prev.is_contiguous() && offset_ == prev.offset_ + static_cast<size_t>(prev.numel());
}

Tensor Tensor::join(const std::vector<Tensor>& parts, const char* what) {
  QARAC_CHECK(!parts.empty() && parts.front().is_contiguous(), what, ": nothing to join");
  int64_t numel = parts.front().numel();
  for (size_t i = 1; i < parts.size(); ++i) {
    QARAC_CHECK(parts[i].follows(parts[i - 1]), what, ": ", parts[i].str(), " (part ", i,
                ") does not follow ", parts[i - 1].str(), " in its buffer");
    numel += parts[i].numel();
  }
  Tensor t = parts.front();
  t.shape_ = {numel};
  t.strides_ = {1};
  return t;
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape_, dtype_, device());
  out.copy_(*this);
  return out;
}

Tensor Tensor::to(Device target) const {
  if (device() == target) return *this;
  Tensor out = empty(shape_, dtype_, target);
  out.copy_(*this);
  return out;
}

Tensor Tensor::to(DType target) const {
  if (dtype_ == target) return *this;
  QARAC_CHECK(device().is_cpu(), "dtype conversion runs on the CPU; ", str(), " is not");
  QARAC_CHECK(is_floating(dtype_) == is_floating(target), "conversion between float and integer: ",
              str(), " to ", dtype_name(target));
  const Tensor src = is_contiguous() ? *this : clone();
  Tensor out = empty(shape_, target, Device::cpu());
  switch (dtype_) {
    case DType::f32: convert_from<float>(src, out); break;
    case DType::f64: convert_from<double>(src, out); break;
    case DType::bf16: {
      std::vector<float> f(static_cast<size_t>(numel()));
      const bf16* s = src.data<bf16>();
      for (size_t i = 0; i < f.size(); ++i) f[i] = static_cast<float>(s[i]);
      return from_vector(f, shape_).to(target);
    }
    case DType::i32: convert_from<int32_t>(src, out); break;
    case DType::i64: convert_from<int64_t>(src, out); break;
  }
  return out;
}

void Tensor::zero_() {
  QARAC_CHECK(is_contiguous(), "zero_ of a non-contiguous tensor ", str());
  zero_bytes(raw(), device(), nbytes());
}

void Tensor::copy_(const Tensor& src) {
  QARAC_CHECK(src.shape_ == shape_ && src.dtype_ == dtype_, "copy_ from ", src.str(), " into ", str());
  if (is_contiguous() && src.is_contiguous()) {
    copy_bytes(raw(), device(), src.raw(), src.device(), nbytes());
    return;
  }
  // Strided copy element by element: views come from slices and are rare and small.
  QARAC_CHECK(device().is_cpu() && src.device().is_cpu(), "strided copy between devices: ", src.str(),
              " into ", str());
  const size_t esize = dtype_size(dtype_);
  const int64_t n = numel();
  const int nd = dim();
  std::vector<int64_t> idx(nd, 0);
  for (int64_t linear = 0; linear < n; ++linear) {
    int64_t so = 0, doff = 0;
    for (int k = 0; k < nd; ++k) {
      so += idx[k] * src.strides_[k];
      doff += idx[k] * strides_[k];
    }
    std::memcpy(static_cast<char*>(raw()) + doff * esize, static_cast<const char*>(src.raw()) + so * esize, esize);
    for (int k = nd - 1; k >= 0; --k) {
      if (++idx[k] < shape_[k]) break;
      idx[k] = 0;
    }
  }
}

std::string Tensor::str() const {
  if (!defined()) return "undefined tensor";
  return std::string(dtype_name(dtype_)) + shape_str(shape_) + " " + device().str();
}

void check_shape(const Tensor& t, const Shape& expected, const char* what) {
  QARAC_CHECK(t.defined() && t.shape() == expected, what, ": expected shape ", shape_str(expected),
              ", got ", t.str());
}

void check_dtype(const Tensor& t, DType expected, const char* what) {
  QARAC_CHECK(t.defined() && t.dtype() == expected, what, ": expected dtype ", dtype_name(expected),
              ", got ", t.str());
}

}  // namespace qarac
