// Result<T>: a value or a positive errno, with the std::expected interface subset we use,
// so that under C++23 it becomes `template <class T> using Result = std::expected<T, int>`.
//
// Thread-safety: a value type; no shared state.
// Errors are positive errno values (EIO, ENOENT, ...). EUCLEAN stands for EFSCORRUPTED.
#pragma once

#include <cerrno>
#include <cstdlib>
#include <type_traits>
#include <utility>
#include <variant>

namespace iomapfs {

// The error side of a Result; mirrors std::unexpected<int>.
class Unexpected {
 public:
  constexpr explicit Unexpected(int err) : err_(err) {}
  constexpr int error() const { return err_; }

 private:
  int err_;
};

// Kernel ext4 reports on-disk corruption as EFSCORRUPTED, which is EUCLEAN.
inline constexpr int kEfsCorrupted = EUCLEAN;

template <class T>
class [[nodiscard]] Result {
 public:
  using value_type = T;

  template <class U = T, std::enable_if_t<std::is_constructible_v<T, U&&> &&
                                              !std::is_same_v<std::decay_t<U>, Result> &&
                                              !std::is_same_v<std::decay_t<U>, Unexpected>,
                                          int> = 0>
  constexpr Result(U&& v) : v_(std::in_place_index<0>, std::forward<U>(v)) {}
  constexpr Result(Unexpected e) : v_(std::in_place_index<1>, e.error()) {}

  constexpr bool has_value() const { return v_.index() == 0; }
  constexpr explicit operator bool() const { return has_value(); }

  // REQUIRES: has_value(). Calling these on an error is a bug in our code (aborts).
  constexpr T& value() & { return Check(), std::get<0>(v_); }
  constexpr const T& value() const& { return Check(), std::get<0>(v_); }
  constexpr T&& value() && { return Check(), std::get<0>(std::move(v_)); }
  constexpr T& operator*() & { return value(); }
  constexpr const T& operator*() const& { return value(); }
  constexpr T&& operator*() && { return std::move(*this).value(); }
  constexpr T* operator->() { return &value(); }
  constexpr const T* operator->() const { return &value(); }

  // REQUIRES: !has_value().
  constexpr int error() const { return has_value() ? 0 : std::get<1>(v_); }

  template <class U>
  constexpr T value_or(U&& dflt) const& {
    return has_value() ? std::get<0>(v_) : static_cast<T>(std::forward<U>(dflt));
  }

 private:
  constexpr void Check() const {
    if (!has_value()) std::abort();
  }
  std::variant<T, int> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  using value_type = void;
  constexpr Result() = default;
  constexpr Result(Unexpected e) : err_(e.error()) {}
  constexpr bool has_value() const { return err_ == 0; }
  constexpr explicit operator bool() const { return has_value(); }
  constexpr void value() const {
    if (err_ != 0) std::abort();
  }
  constexpr int error() const { return err_; }

 private:
  int err_ = 0;
};

}  // namespace iomapfs

// Propagation helpers. IOMAPFS_TRY(expr) returns the error of a failed Result<void>-like expr;
// IOMAPFS_ASSIGN_OR_RETURN(decl, expr) binds the value of a successful Result<T>.
#define IOMAPFS_CONCAT_INNER(a, b) a##b
#define IOMAPFS_CONCAT(a, b) IOMAPFS_CONCAT_INNER(a, b)

#define IOMAPFS_TRY(expr)                                                      \
  do {                                                                         \
    auto&& iomapfs_try_r_ = (expr);                                            \
    if (!iomapfs_try_r_) return ::iomapfs::Unexpected(iomapfs_try_r_.error()); \
  } while (0)

#define IOMAPFS_ASSIGN_OR_RETURN(decl, expr) \
  IOMAPFS_ASSIGN_OR_RETURN_IMPL(IOMAPFS_CONCAT(iomapfs_aor_, __LINE__), decl, expr)
#define IOMAPFS_ASSIGN_OR_RETURN_IMPL(tmp, decl, expr) \
  auto tmp = (expr);                                   \
  if (!tmp) return ::iomapfs::Unexpected(tmp.error()); \
  decl = std::move(*tmp)
