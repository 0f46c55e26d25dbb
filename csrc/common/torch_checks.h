// Argument checks for the torch-facing C++ ops of every family.
//
// The C++ kernel is what torch.ops.leankern.<op> reaches on its device, so these are the op's
// boundary checks there: the messages match the Python checks (python/leankern/core.py) character
// for character, in Python's repr style (shapes as tuples, dtypes as torch.float32, strings quoted),
// and the exception types match too: a wrong dtype raises TypeError (TORCH_CHECK_TYPE), a wrong
// value, shape or device ValueError (TORCH_CHECK_VALUE). All checks are O(1): no pass over data.
#pragma once
#include <algorithm>

#include <ATen/ATen.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <vector>

namespace leankern {
namespace checks {

// ---------------------------------------------------------------------------------------------
// Python repr of values
// ---------------------------------------------------------------------------------------------
// repr(str): single quotes unless the text holds a ' and no ", escapes for \ and control bytes.
inline std::string py_repr(c10::string_view s) {
  const bool dq = s.find('\'') != c10::string_view::npos && s.find('"') == c10::string_view::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == '\\' || c == (unsigned char)q) {
      out += '\\';
      out += (char)c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += (char)c;
    }
  }
  return out + q;
}

// repr(tuple(shape)): (), (32,), (2, 32).
inline std::string py_repr(at::IntArrayRef shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + (shape.size() == 1 ? ",)" : ")");
}

// repr(float): the shortest digits that read back to v, fixed notation for 1e-4 <= |v| < 1e16.
inline std::string py_float_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v == 0) return std::signbit(v) ? "-0.0" : "0.0";
  char buf[48];
  for (int p = 0; p <= 16; ++p) {  // %.16e (17 digits) always reads back exactly
    std::snprintf(buf, sizeof(buf), "%.*e", p, std::fabs(v));
    if (std::strtod(buf, nullptr) == std::fabs(v)) break;
  }
  const std::string s(buf);
  const size_t epos = s.find('e');
  const int exp = std::atoi(s.c_str() + epos + 1);
  std::string digits;
  for (size_t i = 0; i < epos; ++i)
    if (s[i] != '.') digits += s[i];
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  std::string out;
  const int nd = (int)digits.size();
  if (exp < -4 || exp >= 16) {
    char e[16];
    std::snprintf(e, sizeof(e), "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out = digits.substr(0, 1) + (nd > 1 ? "." + digits.substr(1) : "") + e;
  } else if (exp < 0) {
    out = "0." + std::string(-exp - 1, '0') + digits;
  } else if (nd <= exp + 1) {
    out = digits + std::string(exp + 1 - nd, '0') + ".0";
  } else {
    out = digits.substr(0, exp + 1) + "." + digits.substr(exp + 1);
  }
  return (v < 0 ? "-" : "") + out;
}

// str(dtype): torch.float32.
inline std::string dtype_name(at::ScalarType st) { return "torch." + std::string(c10::getDtypeNames(st).first); }

// repr([str(d) for d in dtypes]): ['torch.float32', 'torch.bfloat16'].
inline std::string dtype_list(std::initializer_list<at::ScalarType> dtypes) {
  std::string out = "[";
  for (auto it = dtypes.begin(); it != dtypes.end(); ++it) {
    if (std::find(dtypes.begin(), it, *it) != it) continue;  // {x.dtype, fp32} with fp32 x: listed once
    out += (out.size() == 1 ? "'" : ", '") + dtype_name(*it) + "'";
  }
  return out + "]";
}

// repr(tuple(names)): ('rceil', 'floor').
inline std::string str_tuple(const std::vector<std::string>& names) {
  std::string out = "(";
  for (size_t i = 0; i < names.size(); ++i) out += (i ? ", " : "") + py_repr(names[i]);
  return out + (names.size() == 1 ? ",)" : ")");
}

// ---------------------------------------------------------------------------------------------
// Checks (name: the argument as the user spells it)
// ---------------------------------------------------------------------------------------------
// dtype in `dtypes` (listed in the message), or `also` (accepted silently, e.g. raw uint8 bytes).
inline void check_dtype(const char* name, const at::Tensor& t, std::initializer_list<at::ScalarType> dtypes,
                        at::ScalarType also = at::ScalarType::Undefined) {
  const at::ScalarType st = t.scalar_type();
  bool ok = st == also;
  for (at::ScalarType d : dtypes) ok |= st == d;
  TORCH_CHECK_TYPE(ok, name, ": expected dtype in ", dtype_list(dtypes), ", got ", dtype_name(st));
}

inline void check_device(const char* name, const at::Tensor& t, const at::Device& device, const char* ref_name) {
  TORCH_CHECK_VALUE(t.device() == device, name, ": expected a tensor on ", device.str(), " (the device of ",
                    ref_name, "), got ", t.device().str());
}

inline void check_min_dim(const char* name, const at::Tensor& t, int64_t min_dim) {
  TORCH_CHECK_VALUE(t.dim() >= min_dim, name, ": expected at least ", min_dim, " dim(s), got shape ",
                    py_repr(t.sizes()));
}

inline void check_shape(const char* name, const at::Tensor& t, at::IntArrayRef expected) {
  TORCH_CHECK_VALUE(t.sizes() == expected, name, ": expected shape ", py_repr(expected), ", got ",
                    py_repr(t.sizes()));
}

inline void check_power_of_two(const char* name, int64_t v, int64_t lo, int64_t hi) {
  TORCH_CHECK_VALUE(v >= lo && v <= hi && (v & (v - 1)) == 0, name, ": expected a power of two in [", lo, ", ", hi,
                    "], got ", v);
}

// value in choices; returns its index.
inline size_t check_choice(const char* name, c10::string_view value, const std::vector<std::string>& choices) {
  for (size_t i = 0; i < choices.size(); ++i)
    if (value == choices[i]) return i;
  TORCH_CHECK_VALUE(false, name, ": expected one of ", str_tuple(choices), ", got ", py_repr(value));
  return 0;
}

inline void check_divisible(const char* name, int64_t size, const char* divisor_name, int64_t divisor) {
  TORCH_CHECK_VALUE(size % divisor == 0, name, ": expected a multiple of ", divisor_name, "=", divisor, ", got ",
                    size, " (pad the last dim to a multiple of ", divisor_name, ", or pick a smaller ",
                    divisor_name, ")");
}

}  // namespace checks
}  // namespace leankern
