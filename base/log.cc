#include "base/log.h"

#include <syslog.h>

#include <atomic>
#include <cstdio>
#include <mutex>

namespace iomapfs {
namespace {

std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
std::atomic<bool> g_syslog{false};
std::mutex g_stderr_mu;  // keeps lines from different threads whole

int SyslogPriority(LogLevel level) {
  switch (level) {
    case LogLevel::kError:
      return LOG_ERR;
    case LogLevel::kWarning:
      return LOG_WARNING;
    case LogLevel::kInfo:
      return LOG_INFO;
    case LogLevel::kDebug:
      return LOG_DEBUG;
  }
  return LOG_INFO;
}

const char* Prefix(LogLevel level) {
  switch (level) {
    case LogLevel::kError:
      return "error: ";
    case LogLevel::kWarning:
      return "warning: ";
    case LogLevel::kInfo:
      return "";
    case LogLevel::kDebug:
      return "debug: ";
  }
  return "";
}

}  // namespace

void SetLogLevel(LogLevel level) { g_level.store(static_cast<int>(level)); }
LogLevel GetLogLevel() { return static_cast<LogLevel>(g_level.load(std::memory_order_relaxed)); }

void LogToSyslog(const char* ident) {
  openlog(ident, LOG_PID, LOG_DAEMON);
  g_syslog.store(true);
}

void Log(LogLevel level, const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  if (g_syslog.load()) {
    syslog(SyslogPriority(level), "%s", buf);
    return;
  }
  std::lock_guard<std::mutex> lock(g_stderr_mu);
  fprintf(stderr, "iomapfs: %s%s\n", Prefix(level), buf);
}

}  // namespace iomapfs
