/*
 * The realvm lab's guest tool (built static by tests/vmlab/realvm.py; the
 * nested guests run busybox, which has neither AF_VSOCK nor ethtool):
 *
 *   realvm_guest vsock CID PORT N SIZE
 *       connect to CID:PORT, send N messages of SIZE bytes, read each echoed
 *       back in full; prints "sent=<bytes> received=<bytes>"
 *   realvm_guest nicstats IFACE
 *       the NIC's own statistics (ETHTOOL_GSTATS), one "name value" per line:
 *       virtio_net's per-queue rx_queue_<k>_packets / tx_queue_<k>_packets
 *   realvm_guest channels IFACE N
 *       use N combined queue pairs (ETHTOOL_SCHANNELS, `ethtool -L IFACE combined N`):
 *       virtio_net enables one pair per online CPU by itself
 */
#include <linux/ethtool.h>
#include <linux/sockios.h>
#include <linux/vm_sockets.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

/* All of size bytes written (or read), or -1. */
static long whole(int fd, char *buf, long size, int writing)
{
	for (long off = 0; off < size;) {
		ssize_t n = writing ? write(fd, buf + off, size - off) : read(fd, buf + off, size - off);
		if (n <= 0) {
			perror(writing ? "vsock write" : "vsock read");
			return -1;
		}
		off += n;
	}
	return size;
}

static int vsock(unsigned cid, unsigned port, long n, long size)
{
	struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
	int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
	char *buf = malloc(size);
	long sent = 0, received = 0;
	if (fd < 0 || !buf || connect(fd, (struct sockaddr *)&addr, sizeof(addr))) {
		perror("vsock connect");
		return 1;
	}
	memset(buf, 'v', size);
	for (long i = 0; i < n; i++) {
		if (whole(fd, buf, size, 1) < 0 || whole(fd, buf, size, 0) < 0)
			return 1;
		sent += size;
		received += size;
	}
	close(fd);
	printf("sent=%ld received=%ld\n", sent, received);
	return 0;
}

static int nicstats(const char *iface)
{
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	struct ifreq ifr = {};
	struct {
		struct ethtool_sset_info hdr;
		__u32 len;
	} sset = {.hdr = {.cmd = ETHTOOL_GSSET_INFO, .sset_mask = 1ULL << ETH_SS_STATS}};
	strncpy(ifr.ifr_name, iface, IFNAMSIZ - 1);
	ifr.ifr_data = (void *)&sset;
	if (fd < 0 || ioctl(fd, SIOCETHTOOL, &ifr)) {
		perror("ETHTOOL_GSSET_INFO");
		return 1;
	}
	__u32 n = sset.len;
	struct ethtool_gstrings *names = calloc(1, sizeof(*names) + n * ETH_GSTRING_LEN);
	struct ethtool_stats *stats = calloc(1, sizeof(*stats) + n * sizeof(__u64));
	names->cmd = ETHTOOL_GSTRINGS;
	names->string_set = ETH_SS_STATS;
	names->len = n;
	stats->cmd = ETHTOOL_GSTATS;
	stats->n_stats = n;
	ifr.ifr_data = (void *)names;
	if (ioctl(fd, SIOCETHTOOL, &ifr)) {
		perror("ETHTOOL_GSTRINGS");
		return 1;
	}
	ifr.ifr_data = (void *)stats;
	if (ioctl(fd, SIOCETHTOOL, &ifr)) {
		perror("ETHTOOL_GSTATS");
		return 1;
	}
	for (__u32 i = 0; i < n; i++)
		printf("%.*s %llu\n", ETH_GSTRING_LEN, (char *)names->data + i * ETH_GSTRING_LEN,
		       (unsigned long long)stats->data[i]);
	return 0;
}

static int channels(const char *iface, int n)
{
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	struct ethtool_channels ch = {.cmd = ETHTOOL_GCHANNELS};
	struct ifreq ifr = {};
	strncpy(ifr.ifr_name, iface, IFNAMSIZ - 1);
	ifr.ifr_data = (void *)&ch;
	if (fd < 0 || ioctl(fd, SIOCETHTOOL, &ifr)) {
		perror("ETHTOOL_GCHANNELS");
		return 1;
	}
	ch.cmd = ETHTOOL_SCHANNELS;
	ch.combined_count = n;
	if (ioctl(fd, SIOCETHTOOL, &ifr)) {
		perror("ETHTOOL_SCHANNELS");
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "channels"))
		return channels(argv[2], atoi(argv[3]));
	if (argc == 6 && !strcmp(argv[1], "vsock"))
		return vsock(atoi(argv[2]), atoi(argv[3]), atol(argv[4]), atol(argv[5]));
	if (argc == 3 && !strcmp(argv[1], "nicstats"))
		return nicstats(argv[2]);
	fprintf(stderr, "usage: %s vsock CID PORT N SIZE | nicstats IFACE | channels IFACE N\n", argv[0]);
	return 2;
}
