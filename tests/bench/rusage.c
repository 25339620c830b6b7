/*
 * tests/bench/rusage.c - runs a command and writes its wall time, CPU time and
 * peak RSS to a file: "wall_us cpu_us maxrss_kb exit_status".
 *
 *   rusage OUTFILE COMMAND [ARGS...]
 *
 * Why not Python's wait4 directly: a child started by posix_spawn (vfork)
 * or fork from a big parent starts with the parent's memory, and the kernel
 * records that high-water mark in the child's ru_maxrss at exec. This tiny
 * program forks from a ~1 MB process, so ru_maxrss is the command's own peak
 * (with that of the children it waited for, e.g. a scripted nvidia-smi).
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
	if (argc < 3) {
		fprintf(stderr, "usage: rusage OUTFILE COMMAND [ARGS...]\n");
		return 2;
	}
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		return 2;
	}
	if (pid == 0) {
		execvp(argv[2], argv + 2);
		perror("exec");
		_exit(127);
	}
	int status;
	struct rusage ru;
	if (wait4(pid, &status, 0, &ru) < 0) {
		perror("wait4");
		return 2;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	long long wall = (t1.tv_sec - t0.tv_sec) * 1000000LL + (t1.tv_nsec - t0.tv_nsec) / 1000;
	long long cpu = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000LL +
			ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
	int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	FILE *f = fopen(argv[1], "w");
	if (!f) {
		perror(argv[1]);
		return 2;
	}
	fprintf(f, "%lld %lld %ld %d\n", wall, cpu, ru.ru_maxrss, code);
	fclose(f);
	return 0;
}
