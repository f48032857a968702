// Logging: printf-style, to stderr or (once daemonized) to syslog.
//
// Thread-safety: all functions are safe to call from any thread.
#pragma once

#include <cstdarg>

namespace iomapfs {

enum class LogLevel { kError = 0, kWarning = 1, kInfo = 2, kDebug = 3 };

// Messages above `level` are dropped. Default: kInfo.
void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
// After this, messages go to syslog with `ident` instead of stderr.
void LogToSyslog(const char* ident);

void Log(LogLevel level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

}  // namespace iomapfs

#define IOMAPFS_LOG(level, ...)                                                    \
  do {                                                                             \
    if (::iomapfs::GetLogLevel() >= (level)) ::iomapfs::Log((level), __VA_ARGS__); \
  } while (0)
#define LOG_ERROR(...) IOMAPFS_LOG(::iomapfs::LogLevel::kError, __VA_ARGS__)
#define LOG_WARNING(...) IOMAPFS_LOG(::iomapfs::LogLevel::kWarning, __VA_ARGS__)
#define LOG_INFO(...) IOMAPFS_LOG(::iomapfs::LogLevel::kInfo, __VA_ARGS__)
#define LOG_DEBUG(...) IOMAPFS_LOG(::iomapfs::LogLevel::kDebug, __VA_ARGS__)
