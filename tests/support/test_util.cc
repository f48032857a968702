#include "tests/support/test_util.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace iomapfs::testing {

TempDir::TempDir() {
  const char* base = getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/iomapfs-test-XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) {
    perror("mkdtemp");
    abort();
  }
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

CommandResult Run(const std::vector<std::string>& argv) {
  CommandResult result;
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) return result;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(pipefd[1], 1);
    dup2(pipefd[1], 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    fprintf(stderr, "exec %s failed\n", args[0]);
    _exit(127);
  }
  close(pipefd[1]);
  char buf[4096];
  ssize_t n;
  while ((n = read(pipefd[0], buf, sizeof(buf))) > 0) result.output.append(buf, n);
  close(pipefd[0]);
  int status = 0;
  if (pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status)) {
    result.exit_code = WEXITSTATUS(status);
  }
  return result;
}

CommandResult RunShell(const std::string& command_line) {
  return Run({"/bin/sh", "-c", command_line});
}

std::string MakeImage(const std::string& path, uint64_t size_bytes, const std::string& fs_type,
                      const std::vector<std::string>& extra_args, const std::string& source_dir) {
  { std::ofstream f(path, std::ios::trunc); }
  if (truncate(path.c_str(), static_cast<off_t>(size_bytes)) != 0) return "truncate failed";
  std::vector<std::string> argv = {"mke2fs", "-q", "-F", "-t", fs_type};
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  if (!source_dir.empty()) {
    argv.push_back("-d");
    argv.push_back(source_dir);
  }
  argv.push_back(path);
  CommandResult r = Run(argv);
  if (r.exit_code != 0) return "mke2fs failed: " + r.output;
  return "";
}

bool FsckClean(const std::string& image, std::string* output) {
  CommandResult r = Run({"e2fsck", "-fn", image});
  if (output) *output = r.output;
  return r.exit_code == 0;
}

bool IsRoot() { return geteuid() == 0; }

bool WriteFile(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
  return static_cast<bool>(f);
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string RandomPattern(size_t size, uint32_t seed) {
  std::string s(size, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < size; ++i) {
    x = x * 1664525u + 1013904223u;
    s[i] = static_cast<char>(x >> 24);
  }
  return s;
}

std::vector<std::byte> BytePattern(size_t n, uint8_t seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>(seed + i * 7 + (i >> 12));
  return v;
}

}  // namespace iomapfs::testing
