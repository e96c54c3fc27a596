// Tensor: a typed, shaped view of a Buffer on some device. Owning (it holds the buffer alive)
// and views (reshape, slices) share the same buffer. Ops require contiguous tensors unless they
// say otherwise; `slice` along dimension 0 of a contiguous tensor stays contiguous.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/memory.h"

namespace qarac {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

class Tensor {
 public:
  Tensor() = default;  // undefined: no storage, defined() is false

  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu());
  // Copies host values into a new tensor of the matching dtype.
  template <class T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape,
                            Device device = Device::cpu());

  bool defined() const { return buffer_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }  // in elements
  int dim() const { return static_cast<int>(shape_.size()); }
  int64_t size(int d) const;  // negative d counts from the end
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return buffer_ ? buffer_->device() : Device::cpu(); }
  bool is_contiguous() const;

  void* raw() const;  // address of element 0 of this view
  template <class T>
  T* data() const {
    QARAC_CHECK(dtype_ == dtype_of_v<T>, "tensor of dtype ", dtype_name(dtype_),
                " accessed as ", dtype_name(dtype_of_v<T>));
    return static_cast<T*>(raw());
  }

  // Views sharing this tensor's buffer.
  Tensor reshape(const Shape& shape) const;  // contiguous only; one dimension may be -1
  Tensor slice(int d, int64_t begin, int64_t end) const;
  Tensor select(int64_t i) const;  // index dimension 0, dropping it
  // The elements of the buffer from this view's first one to the buffer's end.
  int64_t capacity() const;
  // Whether another tensor (a view) holds this one's buffer too.
  bool buffer_shared() const { return buffer_.use_count() > 1; }
  // A contiguous view of `shape` starting at this view's first element; the buffer must hold it
  // (capacity). For buffers reused as shapes change (model/layers.h ensure_tensor).
  Tensor resized(const Shape& shape) const;
  // Whether this view begins where `prev` ends, in the same buffer (both contiguous, one dtype).
  bool follows(const Tensor& prev) const;
  // Views that follow one another (follows) as one flat view [Σ numel], e.g. the Q, K and V
  // weights of a layer as one GEMM operand. Fails naming `what` when one does not follow.
  static Tensor join(const std::vector<Tensor>& parts, const char* what);

  // New tensors.
  Tensor clone() const;
  Tensor to(Device device) const;  // returns *this when already there
  Tensor to(DType dtype) const;    // float<->float and int<->int conversions on the CPU
  template <class T>
  std::vector<T> to_vector() const;  // copies to the host

  void zero_();
  void copy_(const Tensor& src);  // same shape and dtype, any devices

  std::string str() const;  // "f32[3, 4] cpu"

 private:
  std::shared_ptr<Buffer> buffer_;
  size_t offset_ = 0;  // in elements
  Shape shape_;
  Shape strides_;
  DType dtype_ = DType::f32;
};

// Fails with "<what>: expected <expected>, got <tensor>" when shape or dtype differ.
void check_shape(const Tensor& t, const Shape& expected, const char* what);
void check_dtype(const Tensor& t, DType expected, const char* what);

template <class T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape, Device device) {
  QARAC_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_vector: ",
              values.size(), " values for shape ", shape_str(shape));
  Tensor t = empty(shape, dtype_of_v<T>, device);
  copy_bytes(t.raw(), device, values.data(), Device::cpu(), t.nbytes());
  return t;
}

template <class T>
std::vector<T> Tensor::to_vector() const {
  QARAC_CHECK(dtype_ == dtype_of_v<T>, "to_vector: tensor is ", dtype_name(dtype_));
  const Tensor c = is_contiguous() ? *this : clone();
  std::vector<T> out(static_cast<size_t>(numel()));
  copy_bytes(out.data(), Device::cpu(), c.raw(), c.device(), c.nbytes());
  return out;
}

// Named tensors: a checkpoint's or a model's weights by name (safetensors, HF imports and exports).
using TensorMap = std::map<std::string, Tensor>;

}  // namespace qarac
