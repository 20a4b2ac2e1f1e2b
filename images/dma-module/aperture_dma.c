// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * aperture_dma: guest driver for Aperture's paravirtual DMA window device.
 *
 * Where the host can map only part of guest RAM for a passed-through device (macOS: the
 * DART through PCIDriverKit, ~1.5 GiB and ~64k mappings, addresses picked by the host),
 * Aperture gives the guest an "aperture-dma" PCI function (1234:a9e0) next to the assigned
 * device, its *target*. This driver installs DMA ops on the target so that every streaming
 * map and coherent allocation of the target's driver becomes a MAP request to the VMM, and
 * the device address the VMM returns is what the target's driver hands to its device.
 * Protocol: passthrough/docs/dma-window-protocol.md (version 1.1) in the Aperture tree.
 * With a 1.1 host (FEATURES bits MASK and ALIGN) each MAP carries the device's DMA mask width
 * and, for a power-of-two map of 64 KiB or more whose guest address is aligned to
 * A = min(len, 2 MiB), the alignment A the device address needs (GPUs map large pages).
 * With a 1.0 host nothing new is sent; either way a returned address over the mask or not
 * A-aligned is released again and the map fails loudly.
 *
 * Kernels: 6.1 through 6.12 (Debian bookworm, bookworm-backports/-security, trixie); the
 * shims below follow MAX_ORDER's change of meaning (6.4) and name (6.8) and the
 * dma_map_ops.alloc_pages rename (6.10). The kernel must have DMA ops at all.
 *
 * Binding order. The ops must be in place before the target's driver maps anything, so they
 * are installed from a PCI bus notifier at BUS_NOTIFY_BIND_DRIVER: after the bus's
 * dma_configure() and before the driver's probe(), every time a driver binds to the target.
 * (On arm64 with CONFIG_IOMMU_DMA, every unbind or failed probe resets dev->dma_ops to NULL
 * in arch_teardown_dma_ops(), so installing once is not enough.) Load this module before the
 * target's driver. If the target already has a driver when the window device probes, its
 * live mappings bypass the window: this driver leaves it alone and logs how to fix it
 * (unbind and bind it again; or load with rebind=1, which does that itself).
 *
 * While a driver is bound to the target through the window, the module holds a reference
 * on itself (rmmod fails with EBUSY/EAGAIN: unbind the target's driver first). If the window
 * device itself goes away (sysfs unbind, hot unplug), the target's driver is unbound first:
 * its device addresses cannot outlive the window.
 *
 * Coherency. The ops do no cache maintenance (sync_* are left NULL, so they are no-ops):
 * Aperture's guest sees its PCI host bridge as "dma-coherent" (the VMM's device tree), guest
 * RAM is normal cacheable memory under KVM and Hypervisor.framework, and the hosts' PCIe
 * (Apple Silicon DART, arm64 servers with a coherent SMMU) snoop the CPU caches. A target
 * that the kernel does not consider DMA-coherent gets a warning at bind. The arm64 cache
 * maintenance helpers (arch_sync_dma_for_device & co) are not exported to modules in 6.1.
 *
 * Device addresses. The host picks them; the protocol has no ceiling register. Every map is
 * checked against the device's DMA mask (coherent mask for allocations) and against its
 * min_align_mask (NVMe: the offset inside a 4 KiB page must be kept); a map that breaks
 * either is released again and fails.
 */

#include <linux/module.h>
#include <linux/pci.h>
#include <linux/device.h>
#include <linux/dma-map-ops.h>
#include <linux/scatterlist.h>
#include <linux/spinlock.h>
#include <linux/mutex.h>
#include <linux/list.h>
#include <linux/io.h>
#include <linux/mm.h>
#include <linux/gfp.h>
#include <linux/notifier.h>
#include <linux/ratelimit.h>
#include <linux/sysfs.h>
#include <linux/slab.h>
#include <linux/sizes.h>
#include <linux/ktime.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/version.h>
#include <linux/log2.h>

/* --- kernel compatibility (6.1 .. 6.12) ---------------------------------------------- */

#if !defined(CONFIG_DMA_OPS) && !defined(CONFIG_ARCH_HAS_DMA_OPS)
#error "aperture_dma needs DMA ops (dev->dma_ops), which this kernel's config leaves out: build the guest kernel with CONFIG_DMA_OPS=y (before 6.12; arm64 gets it with CONFIG_IOMMU_DMA=y) or CONFIG_ARCH_HAS_DMA_OPS=y (6.12 and later; Debian's arm64 kernels have it), or use the guest without DMA windows (dma=identity)"
#endif

/* The largest order the page allocator hands out: MAX_ORDER was exclusive before 6.4,
 * inclusive from 6.4, and renamed MAX_PAGE_ORDER in 6.8. */
#if defined(MAX_PAGE_ORDER)
#define APDMA_MAX_ORDER		MAX_PAGE_ORDER
#elif LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
#define APDMA_MAX_ORDER		MAX_ORDER
#else
#define APDMA_MAX_ORDER		(MAX_ORDER - 1)
#endif

/* dma_map_ops.alloc_pages became alloc_pages_op in 6.10 (alloc_pages is a macro since). */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 10, 0)
#define APDMA_OPS_ALLOC_PAGES	alloc_pages_op
#else
#define APDMA_OPS_ALLOC_PAGES	alloc_pages
#endif

#define APDMA_VENDOR		0x1234
#define APDMA_DEVICE		0xa9e0

/* BAR0 registers: 32 bits, little-endian, aligned 32-bit accesses only. */
#define REG_MAGIC		0x00
#define REG_VERSION		0x04
#define REG_FEATURES		0x08
#define REG_TARGET_RID		0x0c
#define REG_LIMIT_BYTES_LO	0x10
#define REG_LIMIT_BYTES_HI	0x14
#define REG_LIMIT_MAPS		0x18
#define REG_GRANULE		0x1c
#define REG_CMD_ADDR_LO		0x20
#define REG_CMD_ADDR_HI		0x24
#define REG_DOORBELL		0x28
#define REG_STATUS		0x2c
#define REG_MAX_ENTRIES		0x30
#define REG_LIVE_MAPS		0x34
#define REG_LIVE_KIB		0x38
#define APDMA_REGS_LEN		0x3c

#define APDMA_MAGIC		0x4d445041	/* "APDM" in memory order */
#define APDMA_MAJOR		1
#define APDMA_FEAT_BATCH	BIT(0)
#define APDMA_FEAT_FLUSH	BIT(1)
#define APDMA_FEAT_MASK		BIT(2)	/* 1.1: MAP op word carries mask_bits */
#define APDMA_FEAT_ALIGN	BIT(3)	/* 1.1: MAP op word carries align_log2 */
#define APDMA_OP_MASK_SHIFT	8
#define APDMA_OP_ALIGN_SHIFT	16
#define APDMA_MASK_BITS_MIN	12
#define APDMA_ALIGN_LOG2_MIN	12
#define APDMA_ALIGN_LOG2_MAX	21
#define APDMA_BIG_MAP_MIN	SZ_64K	/* power-of-two maps from here get aligned */
#define APDMA_RID_NONE		0xffffffffu

#define APDMA_OP_NOP		0
#define APDMA_OP_MAP		1
#define APDMA_OP_UNMAP		2
#define APDMA_OP_FLUSH		3

/* Status codes from the VMM (entries and STATUS). */
#define APDMA_OK		0
#define APDMA_EINVAL		1
#define APDMA_ENOSPC		2
#define APDMA_ERANGE		3
#define APDMA_ENOENT		4
#define APDMA_EIO		5
#define APDMA_EOPNOTSUPP	6
#define APDMA_EMASK		7	/* 1.1: cannot place the map below 2^mask_bits */
#define APDMA_EALIGN		8	/* 1.1: cannot give the alignment */
/* Guest-side verdicts (never sent by the VMM). */
#define APDMA_PENDING		0xffffffffu	/* entry not processed */
#define APDMA_G_MASK		0x100		/* address beyond the device's DMA mask */
#define APDMA_G_ALIGN		0x101		/* offset in page not kept */
#define APDMA_G_BIGALIGN	0x102		/* large map not aligned to min(len, 2 MiB) */

#define APDMA_CMD_PAGE		4096
#define APDMA_ENTRY_SIZE	32
#define APDMA_PAGE_ENTRIES	(APDMA_CMD_PAGE / APDMA_ENTRY_SIZE)	/* 128 */

struct apdma_entry {
	__le32 op;
	__le32 status;
	__le64 addr;
	__le64 len;
	__le64 dev_addr;
};
static_assert(sizeof(struct apdma_entry) == APDMA_ENTRY_SIZE);

struct apdma_stats {
	u64 maps;		/* successful MAPs */
	u64 unmaps;		/* successful UNMAPs */
	u64 map_failures;
	u64 unmap_failures;
	u64 doorbells;
	u64 live_maps;		/* guest view: maps not yet unmapped */
	u64 live_bytes;
	u64 peak_bytes;
	u32 last_error;		/* status of the last failure, 0 if none */
};

struct apdma {
	struct list_head node;
	struct device *dev;		/* the aperture-dma function (or the selftest's device) */
	int domain;			/* its PCI domain: TARGET_RID is in it */
	void __iomem *regs;
	/* Per instance, so the ops find their window: container_of(dev->dma_ops). */
	struct dma_map_ops ops;

	spinlock_t lock;		/* command page, doorbell, stats */
	struct apdma_entry *cmd;	/* one page of guest RAM */
	unsigned int batch;		/* entries per doorbell */
	struct apdma_stats st;
	struct ratelimit_state rs;

	struct mutex bench_lock;	/* one bench at a time; bench_result */
	char bench_result[256];		/* last bench's line, "" before the first */

	u32 version, features, rid, limit_maps, granule, max_entries;
	bool told_mask, told_align;	/* the once-per-device errors below */
	u64 limit_bytes;

	struct pci_dev *target;		/* referenced */
	/* Under the target's device lock (the bus notifier runs with it held): */
	const struct dma_map_ops *saved_ops;
	bool removing;
	bool holds_module;		/* a driver is bound to the target through us */
	struct notifier_block nb;
};

static char *target;
module_param(target, charp, 0444);
MODULE_PARM_DESC(target, "PCI address (DDDD:BB:DD.F or BB:DD.F) of the device whose DMA goes "
		 "through the window; empty: the one the window's TARGET_RID names");

static bool rebind;
module_param(rebind, bool, 0644);
MODULE_PARM_DESC(rebind, "if the target already has a driver when the window probes, unbind "
		 "it and bind it again through the window (default: leave it and log an error)");

static bool align_large = true;
module_param(align_large, bool, 0444);
MODULE_PARM_DESC(align_large, "protocol 1.1's large-map rule: a power-of-two map of 64 KiB or "
		 "more at a guest address aligned to A = min(len, 2 MiB) must get an A-aligned "
		 "device address (default 1; 0 leaves it out: for a 1.0 host with devices that "
		 "do not need it, e.g. NVMe, which retries a refused map forever)");

static LIST_HEAD(apdma_list);
static DEFINE_MUTEX(apdma_list_lock);

static const char *apdma_status_name(u32 st)
{
	switch (st) {
	case APDMA_OK: return "OK";
	case APDMA_EINVAL: return "EINVAL (zero length, wrapping range or malformed entry)";
	case APDMA_ENOSPC: return "ENOSPC (window full: the host's byte or mapping limit)";
	case APDMA_ERANGE: return "ERANGE (not guest RAM)";
	case APDMA_ENOENT: return "ENOENT (not mapped)";
	case APDMA_EIO: return "EIO (the host refused)";
	case APDMA_EOPNOTSUPP: return "EOPNOTSUPP (unknown op)";
	case APDMA_EMASK: return "EMASK (the host cannot place it below the device's DMA mask)";
	case APDMA_EALIGN: return "EALIGN (the host cannot align the device address)";
	case APDMA_PENDING: return "not processed by the VMM";
	case APDMA_G_MASK: return "device address beyond the device's DMA mask";
	case APDMA_G_ALIGN: return "device address does not keep the offset the device needs";
	case APDMA_G_BIGALIGN: return "device address of a large map not aligned to min(len, 2 MiB)";
	default: return "unknown status";
	}
}

static int apdma_status_errno(u32 st)
{
	switch (st) {
	case APDMA_ENOSPC: return -ENOMEM;	/* map_sg contract: out of resources */
	case APDMA_EINVAL:
	case APDMA_ERANGE: return -EINVAL;
	default: return -EIO;
	}
}

#ifdef APDMA_SELFTEST
/* aperture_dma_selftest.c: a software model of the VMM behind these. */
static u32 apdma_rd(struct apdma *ad, unsigned int reg);
static void apdma_wr(struct apdma *ad, unsigned int reg, u32 val);
#else
static inline u32 apdma_rd(struct apdma *ad, unsigned int reg)
{
	return readl(ad->regs + reg);
}

static inline void apdma_wr(struct apdma *ad, unsigned int reg, u32 val)
{
	writel(val, ad->regs + reg);
}
#endif

static inline struct apdma *dev_to_apdma(struct device *dev)
{
	return container_of(dev->dma_ops, struct apdma, ops);
}

/* --- protocol 1.1: mask and alignment of a MAP ------------------------------------------ */

/* The alignment a map's device address must have: min(len, 2 MiB) for a power-of-two map of
 * 64 KiB or more whose guest address is aligned to that; 0 for any other map. */
static u64 apdma_map_align(phys_addr_t phys, u64 len)
{
	u64 a = min_t(u64, len, SZ_2M);

	if (!align_large || len < APDMA_BIG_MAP_MIN || !is_power_of_2(len) || !IS_ALIGNED(phys, a))
		return 0;
	return a;
}

/* The width of a DMA mask: all ones is 64. */
static unsigned int apdma_mask_bits(u64 mask)
{
	return max_t(unsigned int, fls64(mask), APDMA_MASK_BITS_MIN);
}

/* The MAP op word: mask_bits and align_log2 where the host announces them (1.1). */
static u32 apdma_map_op(struct apdma *ad, phys_addr_t phys, u64 len, u64 mask)
{
	u32 op = APDMA_OP_MAP;
	u64 a = apdma_map_align(phys, len);

	if (ad->features & APDMA_FEAT_MASK)
		op |= apdma_mask_bits(mask) << APDMA_OP_MASK_SHIFT;
	if (a && (ad->features & APDMA_FEAT_ALIGN))
		op |= clamp_t(u32, ilog2(a), APDMA_ALIGN_LOG2_MIN, APDMA_ALIGN_LOG2_MAX)
		      << APDMA_OP_ALIGN_SHIFT;
	return op;
}

/* Once per device, with the numbers: a map refused for its mask or alignment. */
static void apdma_tell_refused(struct apdma *ad, struct device *dev, phys_addr_t phys, u64 len,
			       u64 mask, u64 da, u32 st)
{
	switch (st) {
	case APDMA_EMASK:
	case APDMA_G_MASK:
		if (ad->told_mask)
			return;
		ad->told_mask = true;
		if (st == APDMA_EMASK)
			pr_err("aperture_dma: %s: map of %llu at %pa refused: device address over its %u-bit DMA mask\n",
			       dev_name(dev), len, &phys, apdma_mask_bits(mask));
		else
			pr_err("aperture_dma: %s: map of %llu at %pa refused: device address %#llx over its %u-bit DMA mask\n",
			       dev_name(dev), len, &phys, da, apdma_mask_bits(mask));
		break;
	case APDMA_EALIGN:
	case APDMA_G_BIGALIGN:
		if (ad->told_align)
			return;
		ad->told_align = true;
		if (st == APDMA_EALIGN)
			pr_err("aperture_dma: %s: map of %llu at %pa refused: the host cannot align its device address to %llu\n",
			       dev_name(dev), len, &phys, apdma_map_align(phys, len));
		else
			pr_err("aperture_dma: %s: map of %llu at %pa refused: device address %#llx is not a multiple of %llu\n",
			       dev_name(dev), len, &phys, da, apdma_map_align(phys, len));
		break;
	}
}

/* --- command page and doorbell (all under ad->lock) ------------------------------------ */

static void apdma_set_entry(struct apdma *ad, unsigned int i, u32 op, u64 addr, u64 len)
{
	struct apdma_entry *e = &ad->cmd[i];

	e->op = cpu_to_le32(op);
	e->status = cpu_to_le32(APDMA_PENDING);
	e->addr = cpu_to_le64(addr);
	e->len = cpu_to_le64(len);
	e->dev_addr = 0;
}

static inline u32 apdma_entry_status(struct apdma *ad, unsigned int i)
{
	return le32_to_cpu(ad->cmd[i].status);
}

/* Runs entries [0, n) of the command page; afterwards each entry holds its own status.
 * Not counted in the stats (the bench's doorbells); apdma_ring() counts. */
static void apdma_ring_uncounted(struct apdma *ad, unsigned int n)
{
	u32 status, done, i;

	/* writel orders the command page stores before the doorbell store (a trap to the
	 * VMM, which handles every entry before the store completes); readl orders the
	 * command page loads after it. */
	apdma_wr(ad, REG_DOORBELL, n);
	status = apdma_rd(ad, REG_STATUS);
	done = apdma_rd(ad, REG_DOORBELL);
	if (status == APDMA_OK && done == n)
		return;
	if (__ratelimit(&ad->rs))
		dev_err(ad->dev, "doorbell of %u entries: status %u %s, %u processed\n",
			n, status, apdma_status_name(status), done);
	for (i = min(done, n); i < n; i++)
		ad->cmd[i].status = cpu_to_le32(status != APDMA_OK ? status : APDMA_PENDING);
}

static void apdma_ring(struct apdma *ad, unsigned int n)
{
	apdma_ring_uncounted(ad, n);
	ad->st.doorbells++;
}

/*
 * Reads the result of MAP entry i for [phys, phys+len) and accounts for it. Returns the
 * status (host or guest verdict); *mapped tells whether the host holds a mapping (which the
 * caller must release if the status is not OK).
 */
static u32 apdma_map_result(struct apdma *ad, struct device *dev, unsigned int i,
			    phys_addr_t phys, size_t len, u64 mask, dma_addr_t *dma, bool *mapped)
{
	u32 st = apdma_entry_status(ad, i);
	u64 da = le64_to_cpu(ad->cmd[i].dev_addr);
	u64 keep, align = apdma_map_align(phys, len);

	*mapped = st == APDMA_OK;
	if (st == APDMA_OK) {
		*dma = da;
		ad->st.maps++;
		ad->st.live_maps++;
		ad->st.live_bytes += len;
		ad->st.peak_bytes = max(ad->st.peak_bytes, ad->st.live_bytes);
		keep = dma_get_min_align_mask(dev);
		if (da + len - 1 < da || da + len - 1 > mask)
			st = APDMA_G_MASK;
		else if (align && !IS_ALIGNED(da, align))
			st = APDMA_G_BIGALIGN;
		else if ((da ^ phys) & keep)
			st = APDMA_G_ALIGN;
		else if ((da ^ phys) & ~PAGE_MASK)
			dev_warn_once(ad->dev,
				      "device address %#llx for guest %pa: offset in page not kept\n",
				      da, &phys);
	}
	if (st != APDMA_OK) {
		ad->st.map_failures++;
		ad->st.last_error = st;
		apdma_tell_refused(ad, dev, phys, len, mask, da, st);
	}
	return st;
}

static void apdma_unmap_result(struct apdma *ad, unsigned int i, size_t len)
{
	u32 st = apdma_entry_status(ad, i);

	if (st == APDMA_OK) {
		ad->st.unmaps++;
		ad->st.live_maps--;
		ad->st.live_bytes -= len;
		return;
	}
	ad->st.unmap_failures++;
	ad->st.last_error = st;
	if (__ratelimit(&ad->rs))
		dev_err(ad->dev, "unmap of %llu bytes at device address %#llx for %s failed: %s\n",
			le64_to_cpu(ad->cmd[i].len), le64_to_cpu(ad->cmd[i].addr),
			pci_name(ad->target), apdma_status_name(st));
}

/*
 * Logs a failed map; called without the lock (reads the live counters from the VMM). An
 * error, except a full window for a caller that retries (DMA_ATTR_NO_WARN: NVMe requeues
 * the request): a warning then, out of the way of a quiet console. Both are counted.
 */
static void apdma_map_failed(struct apdma *ad, phys_addr_t phys, size_t len, u32 st,
			     const char *what, unsigned long attrs)
{
	const char *level = st == APDMA_ENOSPC && (attrs & DMA_ATTR_NO_WARN) ? KERN_WARNING
									      : KERN_ERR;

	if (!__ratelimit(&ad->rs))
		return;
	dev_printk(level, ad->dev,
		   "%s of %zu bytes at %pa for %s failed: %s (window: %llu bytes, %u maps; live: %u maps, %u KiB)\n",
		   what, len, &phys, pci_name(ad->target), apdma_status_name(st), ad->limit_bytes,
		   ad->limit_maps, apdma_rd(ad, REG_LIVE_MAPS), apdma_rd(ad, REG_LIVE_KIB));
}

/* Maps one range; returns its device address or DMA_MAPPING_ERROR (logged). */
static dma_addr_t apdma_map_range(struct apdma *ad, struct device *dev, phys_addr_t phys,
				  size_t len, u64 mask, const char *what, unsigned long attrs)
{
	dma_addr_t dma = DMA_MAPPING_ERROR;
	unsigned long flags;
	bool mapped;
	u32 st;

	spin_lock_irqsave(&ad->lock, flags);
	apdma_set_entry(ad, 0, apdma_map_op(ad, phys, len, mask), phys, len);
	apdma_ring(ad, 1);
	st = apdma_map_result(ad, dev, 0, phys, len, mask, &dma, &mapped);
	if (st != APDMA_OK && mapped) {
		apdma_set_entry(ad, 0, APDMA_OP_UNMAP, dma, len);
		apdma_ring(ad, 1);
		apdma_unmap_result(ad, 0, len);
	}
	spin_unlock_irqrestore(&ad->lock, flags);
	if (st == APDMA_OK)
		return dma;
	apdma_map_failed(ad, phys, len, st, what, attrs);
	return DMA_MAPPING_ERROR;
}

static void apdma_unmap_range(struct apdma *ad, dma_addr_t dma, size_t len)
{
	unsigned long flags;

	spin_lock_irqsave(&ad->lock, flags);
	apdma_set_entry(ad, 0, APDMA_OP_UNMAP, dma, len);
	apdma_ring(ad, 1);
	apdma_unmap_result(ad, 0, len);
	spin_unlock_irqrestore(&ad->lock, flags);
}

/* --- dma_map_ops --------------------------------------------------------------------- */

static dma_addr_t apdma_map_page(struct device *dev, struct page *page, unsigned long offset,
				 size_t size, enum dma_data_direction dir, unsigned long attrs)
{
	return apdma_map_range(dev_to_apdma(dev), dev, page_to_phys(page) + offset, size,
			       dma_get_mask(dev), "map_page", attrs);
}

static void apdma_unmap_page(struct device *dev, dma_addr_t dma, size_t size,
			     enum dma_data_direction dir, unsigned long attrs)
{
	apdma_unmap_range(dev_to_apdma(dev), dma, size);
}

/* Unmaps the first nents entries of sgl that hold a mapping (sg_dma_len != 0), batched. */
static void apdma_unmap_sg_entries(struct apdma *ad, struct scatterlist *sgl, int nents)
{
	struct scatterlist *sg = sgl, *s;
	unsigned long flags;
	unsigned int n, k;
	int i = 0;

	while (i < nents) {
		struct scatterlist *first = NULL;

		spin_lock_irqsave(&ad->lock, flags);
		for (n = 0; i < nents && n < ad->batch; i++, sg = sg_next(sg)) {
			if (!sg_dma_len(sg))
				continue;
			if (!first)
				first = sg;
			apdma_set_entry(ad, n++, APDMA_OP_UNMAP, sg_dma_address(sg), sg_dma_len(sg));
		}
		if (n) {
			apdma_ring(ad, n);
			for (k = 0, s = first; k < n; s = sg_next(s)) {
				if (!sg_dma_len(s))
					continue;
				apdma_unmap_result(ad, k++, sg_dma_len(s));
			}
		}
		spin_unlock_irqrestore(&ad->lock, flags);
	}
}

/*
 * One MAP per entry (no merging: the block layer already merged what the device allows,
 * and the VMM coalesces neighbouring small maps into shared windows), up to `batch` per
 * doorbell. On failure, whatever was mapped is released and a negative errno returned.
 */
static int apdma_map_sg(struct device *dev, struct scatterlist *sgl, int nents,
			enum dma_data_direction dir, unsigned long attrs)
{
	struct apdma *ad = dev_to_apdma(dev);
	struct scatterlist *sg = sgl, *s;
	u64 mask = dma_get_mask(dev);
	phys_addr_t bad_phys = 0;
	size_t bad_len = 0;
	unsigned long flags;
	u32 bad = APDMA_OK;
	unsigned int n, k;
	int i = 0;

	/* sg_dma_len() == 0 marks an entry not mapped (for the unwind): needs its own field. */
	BUILD_BUG_ON(!IS_ENABLED(CONFIG_NEED_SG_DMA_LENGTH));
	while (i < nents && bad == APDMA_OK) {
		struct scatterlist *first = sg;

		spin_lock_irqsave(&ad->lock, flags);
		for (n = 0; i < nents && n < ad->batch; i++, sg = sg_next(sg)) {
			sg->dma_address = DMA_MAPPING_ERROR;
			sg_dma_len(sg) = 0;
			apdma_set_entry(ad, n++, apdma_map_op(ad, sg_phys(sg), sg->length, mask),
					sg_phys(sg), sg->length);
		}
		apdma_ring(ad, n);
		for (k = 0, s = first; k < n; k++, s = sg_next(s)) {
			dma_addr_t dma = DMA_MAPPING_ERROR;
			bool mapped;
			u32 st = apdma_map_result(ad, dev, k, sg_phys(s), s->length, mask, &dma,
						  &mapped);

			if (mapped) {
				s->dma_address = dma;
				sg_dma_len(s) = s->length;
			}
			if (st != APDMA_OK && bad == APDMA_OK) {
				bad = st;
				bad_phys = sg_phys(s);
				bad_len = s->length;
			}
		}
		spin_unlock_irqrestore(&ad->lock, flags);
	}
	if (bad == APDMA_OK)
		return nents;
	apdma_map_failed(ad, bad_phys, bad_len, bad, "map_sg entry", attrs);
	apdma_unmap_sg_entries(ad, sgl, i);
	return apdma_status_errno(bad);
}

static void apdma_unmap_sg(struct device *dev, struct scatterlist *sgl, int nents,
			   enum dma_data_direction dir, unsigned long attrs)
{
	apdma_unmap_sg_entries(dev_to_apdma(dev), sgl, nents);
}

/* Coherent memory: zeroed pages of the linear map (cacheable: see Coherency above), mapped
 * whole. The same rounded size is used to map and to unmap. */
static void *apdma_alloc(struct device *dev, size_t size, dma_addr_t *dma_handle, gfp_t gfp,
			 unsigned long attrs)
{
	struct apdma *ad = dev_to_apdma(dev);
	void *cpu;

	size = PAGE_ALIGN(size);
	if (get_order(size) > APDMA_MAX_ORDER) {
		if (__ratelimit(&ad->rs))
			dev_err(ad->dev, "coherent allocation of %zu bytes for %s: larger than "
				"the page allocator gives (%lu bytes)\n", size, pci_name(ad->target),
				PAGE_SIZE << APDMA_MAX_ORDER);
		return NULL;
	}
	cpu = alloc_pages_exact(size, (gfp & ~__GFP_COMP) | __GFP_ZERO);
	if (!cpu)
		return NULL;
	*dma_handle = apdma_map_range(ad, dev, virt_to_phys(cpu), size, dev->coherent_dma_mask,
				      "coherent map", attrs);
	if (*dma_handle == DMA_MAPPING_ERROR) {
		free_pages_exact(cpu, size);
		return NULL;
	}
	return cpu;
}

static void apdma_free(struct device *dev, size_t size, void *cpu, dma_addr_t dma_handle,
		       unsigned long attrs)
{
	size = PAGE_ALIGN(size);
	apdma_unmap_range(dev_to_apdma(dev), dma_handle, size);
	free_pages_exact(cpu, size);
}

/* dma_alloc_pages(): size is already page aligned. */
static struct page *apdma_alloc_pages(struct device *dev, size_t size, dma_addr_t *dma_handle,
				      enum dma_data_direction dir, gfp_t gfp)
{
	struct page *page = alloc_pages_node(dev_to_node(dev), gfp, get_order(size));

	if (!page)
		return NULL;
	*dma_handle = apdma_map_range(dev_to_apdma(dev), dev, page_to_phys(page), size,
				      dev->coherent_dma_mask, "page allocation map", 0);
	if (*dma_handle == DMA_MAPPING_ERROR) {
		__free_pages(page, get_order(size));
		return NULL;
	}
	return page;
}

static void apdma_free_pages(struct device *dev, size_t size, struct page *page,
			     dma_addr_t dma_handle, enum dma_data_direction dir)
{
	apdma_unmap_range(dev_to_apdma(dev), dma_handle, size);
	__free_pages(page, get_order(size));
}

/* dma_common_mmap()/get_sgtable() are not exported in 6.1; these are dma-direct's for a
 * coherent device, for buffers from apdma_alloc (linear map, physically contiguous). */
static int apdma_mmap(struct device *dev, struct vm_area_struct *vma, void *cpu,
		      dma_addr_t dma_addr, size_t size, unsigned long attrs)
{
	unsigned long user_count = vma_pages(vma);
	unsigned long count = PAGE_ALIGN(size) >> PAGE_SHIFT;

	if (vma->vm_pgoff >= count || user_count > count - vma->vm_pgoff)
		return -ENXIO;
	return remap_pfn_range(vma, vma->vm_start, virt_to_pfn(cpu) + vma->vm_pgoff,
			       user_count << PAGE_SHIFT, vma->vm_page_prot);
}

static int apdma_get_sgtable(struct device *dev, struct sg_table *sgt, void *cpu,
			     dma_addr_t dma_addr, size_t size, unsigned long attrs)
{
	int ret = sg_alloc_table(sgt, 1, GFP_KERNEL);

	if (!ret)
		sg_set_page(sgt->sgl, virt_to_page(cpu), PAGE_ALIGN(size), 0);
	return ret;
}

/* The host picks device addresses and the protocol gives no ceiling: accept any mask and
 * check each returned address against it instead (apdma_map_result). */
static int apdma_dma_supported(struct device *dev, u64 mask)
{
	return 1;
}

/* Unknown ceiling: ask drivers for all the address bits they can use. */
static u64 apdma_get_required_mask(struct device *dev)
{
	return DMA_BIT_MASK(64);
}

/*
 * Block drivers (NVMe, SCSI) cap their request size with dma_max_mapping_size(). A request
 * of S bytes in page-sized pieces can cost S * GRANULE / PAGE_SIZE of the window (each page
 * in a granule of its own), and a request that does not fit even in an empty window would
 * be retried forever (NVMe requeues on a map failure). So the worst case is kept within half
 * the window; the rest is for the driver's long-lived allocations (queues) and for other
 * requests in flight. With a real window (~1.5 GiB, 16 KiB granules) this is ~192 MiB: no
 * limit in practice.
 */
static size_t apdma_max_mapping_size(struct device *dev)
{
	struct apdma *ad = dev_to_apdma(dev);
	u64 inflation = max_t(u64, ad->granule / PAGE_SIZE, 1);
	u64 max = div64_u64(ad->limit_bytes / 2, inflation);

	return clamp_t(u64, rounddown(max, PAGE_SIZE), PAGE_SIZE, SIZE_MAX);
}

static const struct dma_map_ops aperture_dma_ops = {
	.alloc = apdma_alloc,
	.free = apdma_free,
	.APDMA_OPS_ALLOC_PAGES = apdma_alloc_pages,
	.free_pages = apdma_free_pages,
	.mmap = apdma_mmap,
	.get_sgtable = apdma_get_sgtable,
	.map_page = apdma_map_page,
	.unmap_page = apdma_unmap_page,
	.map_sg = apdma_map_sg,
	.unmap_sg = apdma_unmap_sg,
	/* map_resource: MMIO is not guest RAM, the VMM would refuse it: left NULL (fails). */
	/* sync_*: NULL, no cache maintenance (see Coherency at the top). */
	.dma_supported = apdma_dma_supported,
	.get_required_mask = apdma_get_required_mask,
	.max_mapping_size = apdma_max_mapping_size,
};

/* --- the target ---------------------------------------------------------------------- */

/* Installs the window's ops on the target; its device lock is held, no driver is probing
 * it yet (or none is bound). */
static void apdma_install(struct apdma *ad)
{
	struct device *dev = &ad->target->dev;

	if (dev->dma_ops == &ad->ops)
		return;
	if (dev->dma_ops)
		dev_warn(ad->dev, "%s had DMA ops %ps (a guest IOMMU?): replaced by the window's\n",
			 pci_name(ad->target), dev->dma_ops);
	ad->saved_ops = dev->dma_ops;
	set_dma_ops(dev, &ad->ops);
	if (!dev_is_dma_coherent(dev))
		dev_warn(ad->dev, "%s is not DMA-coherent for the kernel, but the window does "
			 "no cache maintenance\n", pci_name(ad->target));
}

static void apdma_uninstall(struct apdma *ad)
{
	if (ad->target->dev.dma_ops == &ad->ops)
		set_dma_ops(&ad->target->dev, ad->saved_ops);
}

static int apdma_bus_notify(struct notifier_block *nb, unsigned long action, void *data)
{
	struct apdma *ad = container_of(nb, struct apdma, nb);
	struct device *dev = data;
	unsigned long flags;
	u64 live_maps, live_bytes;

	if (dev != &ad->target->dev)
		return NOTIFY_DONE;
	/* The driver core calls these with the target's device lock held. */
	switch (action) {
	case BUS_NOTIFY_BIND_DRIVER:
		if (ad->removing)
			break;
		apdma_install(ad);
		dev_info(ad->dev, "%s: DMA of driver %s goes through the window\n",
			 pci_name(ad->target), dev->driver ? dev->driver->name : "?");
		break;
	case BUS_NOTIFY_BOUND_DRIVER:
		if (dev->dma_ops == &ad->ops && !ad->holds_module) {
			__module_get(THIS_MODULE);
			ad->holds_module = true;
		}
		break;
	case BUS_NOTIFY_UNBOUND_DRIVER:
	case BUS_NOTIFY_DRIVER_NOT_BOUND:
		if (ad->holds_module) {
			ad->holds_module = false;
			module_put(THIS_MODULE);
		}
		/* arch_teardown_dma_ops() already cleared them on arm64; the next bind
		 * installs them again. */
		apdma_uninstall(ad);
		spin_lock_irqsave(&ad->lock, flags);
		live_maps = ad->st.live_maps;
		live_bytes = ad->st.live_bytes;
		spin_unlock_irqrestore(&ad->lock, flags);
		if (live_maps)
			dev_warn(ad->dev, "%s unbound with %llu mappings (%llu bytes) still live\n",
				 pci_name(ad->target), live_maps, live_bytes);
		break;
	}
	return NOTIFY_OK;
}

/* Parses "DDDD:BB:DD.F" or "BB:DD.F". */
static int apdma_parse_bdf(const char *s, unsigned int *dom, unsigned int *bus,
			   unsigned int *devfn)
{
	unsigned int d = 0, b, sl, f;
	int len = 0;

	if (sscanf(s, "%x:%x:%x.%x%n", &d, &b, &sl, &f, &len) != 4 || len != strlen(s)) {
		d = 0;
		len = 0;
		if (sscanf(s, "%x:%x.%x%n", &b, &sl, &f, &len) != 3 || len != strlen(s))
			return -EINVAL;
	}
	if (d > 0xffff || b > 0xff || sl > 0x1f || f > 7)
		return -EINVAL;
	*dom = d;
	*bus = b;
	*devfn = PCI_DEVFN(sl, f);
	return 0;
}

static struct pci_dev *apdma_find_target(struct apdma *ad)
{
	struct device *d = ad->dev;
	unsigned int dom, bus, devfn;
	struct pci_dev *t;
	const char *param = target ? strim(target) : "";

	if (*param) {
		if (apdma_parse_bdf(param, &dom, &bus, &devfn)) {
			dev_err(d, "target=%s: not a PCI address (DDDD:BB:DD.F or BB:DD.F)\n", param);
			return ERR_PTR(-EINVAL);
		}
		if (ad->rid != APDMA_RID_NONE &&
		    (ad->rid != (bus << 8 | devfn) || dom != ad->domain))
			dev_warn(d, "target=%s overrides the window's TARGET_RID %02x:%02x.%u\n",
				 param, ad->rid >> 8, PCI_SLOT(ad->rid & 0xff), PCI_FUNC(ad->rid & 0xff));
	} else {
		if (ad->rid == APDMA_RID_NONE || ad->rid > 0xffff) {
			dev_err(d, "the VMM names no target (TARGET_RID %#x) and no target= was given\n",
				ad->rid);
			return ERR_PTR(-ENODEV);
		}
		dom = ad->domain;
		bus = ad->rid >> 8;
		devfn = ad->rid & 0xff;
	}
	t = pci_get_domain_bus_and_slot(dom, bus, devfn);
	if (!t) {
		dev_err(d, "target %04x:%02x:%02x.%u (%s) is not a PCI device in this guest\n",
			dom, bus, PCI_SLOT(devfn), PCI_FUNC(devfn), *param ? "target=" : "TARGET_RID");
		return ERR_PTR(-ENODEV);
	}
	if (&t->dev == ad->dev) {
		dev_err(d, "the window cannot be its own target\n");
		pci_dev_put(t);
		return ERR_PTR(-EINVAL);
	}
	return t;
}

/* --- sysfs (on the aperture-dma function) ----------------------------------------------- */

#define APDMA_STAT_ATTR(field)								\
static ssize_t field##_show(struct device *dev, struct device_attribute *attr, char *buf)	\
{											\
	struct apdma *ad = dev_get_drvdata(dev);					\
	unsigned long flags;								\
	u64 v;										\
											\
	spin_lock_irqsave(&ad->lock, flags);						\
	v = ad->st.field;								\
	spin_unlock_irqrestore(&ad->lock, flags);					\
	return sysfs_emit(buf, "%llu\n", v);						\
}											\
static DEVICE_ATTR_RO(field)

APDMA_STAT_ATTR(maps);
APDMA_STAT_ATTR(unmaps);
APDMA_STAT_ATTR(map_failures);
APDMA_STAT_ATTR(unmap_failures);
APDMA_STAT_ATTR(doorbells);
APDMA_STAT_ATTR(live_maps);
APDMA_STAT_ATTR(live_bytes);
APDMA_STAT_ATTR(peak_bytes);

static ssize_t last_error_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct apdma *ad = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%s\n", ad->st.last_error ? apdma_status_name(ad->st.last_error)
							  : "none");
}
static DEVICE_ATTR_RO(last_error);

static ssize_t target_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct apdma *ad = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%s\n", pci_name(ad->target));
}
static DEVICE_ATTR_RO(target);

/* 1 while the target's dma_ops are the window's. */
static ssize_t installed_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct apdma *ad = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%d\n", READ_ONCE(ad->target->dev.dma_ops) == &ad->ops);
}
static DEVICE_ATTR_RO(installed);

static ssize_t limits_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct apdma *ad = dev_get_drvdata(dev);

	return sysfs_emit(buf, "version=%u.%u features=%#x bytes=%llu maps=%u granule=%u batch=%u\n",
			  ad->version >> 16, ad->version & 0xffff, ad->features, ad->limit_bytes,
			  ad->limit_maps, ad->granule, ad->batch);
}
static DEVICE_ATTR_RO(limits);

static ssize_t limit_bytes_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%llu\n", ((struct apdma *)dev_get_drvdata(dev))->limit_bytes);
}
static DEVICE_ATTR_RO(limit_bytes);

/* The VMM's own counters (registers LIVE_MAPS, LIVE_KIB). */
static ssize_t host_live_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct apdma *ad = dev_get_drvdata(dev);

	return sysfs_emit(buf, "maps=%u kib=%u\n", apdma_rd(ad, REG_LIVE_MAPS),
			  apdma_rd(ad, REG_LIVE_KIB));
}
static DEVICE_ATTR_RO(host_live);

/* echo 1 > flush: FLUSH (op 3), the VMM drops its cached windows (FEATURES bit 1). */
static ssize_t flush_store(struct device *dev, struct device_attribute *attr, const char *buf,
			   size_t count)
{
	struct apdma *ad = dev_get_drvdata(dev);
	unsigned long flags;
	u32 st;

	if (!(ad->features & APDMA_FEAT_FLUSH))
		return -EOPNOTSUPP;
	spin_lock_irqsave(&ad->lock, flags);
	apdma_set_entry(ad, 0, APDMA_OP_FLUSH, 0, 0);
	apdma_ring(ad, 1);
	st = apdma_entry_status(ad, 0);
	spin_unlock_irqrestore(&ad->lock, flags);
	if (st != APDMA_OK) {
		dev_err(dev, "flush failed: %s\n", apdma_status_name(st));
		return -EIO;
	}
	return count;
}
static DEVICE_ATTR_WO(flush);

/*
 * Round-trip benchmark: echo N > bench (1..100000), then cat bench_result. It MAPs and
 * UNMAPs 4 KiB pieces of its own scratch pages (APDMA_BENCH_PAGES pages allocated for the
 * run and freed after) through the command page and the doorbell, exactly as the DMA ops do:
 *   single: N rounds of one MAP doorbell and one UNMAP doorbell (one entry each);
 *   batch:  max(N / 128, 1) rounds of one doorbell of 128 MAPs (distinct pages), then one
 *           of their 128 UNMAPs (ad->batch entries per doorbell if the VMM takes fewer).
 * Only the time under the command-page lock is counted (filling entries, the doorbell trap,
 * reading the results), not the wait for the lock. The lock is taken per single round (its
 * two doorbells) and per batched doorbell, so the target's DMA interleaves with the bench;
 * the bench adds and removes only its own mappings, and none of its doorbells or entries
 * count in the window's stats (doorbells, maps, map_failures...: those are the target's).
 * Entries that fail are counted in the result (failures=), never retried; with a nearly
 * full window they are ENOSPC. bench_result is one line (averages in ns):
 *   single_ns_per_map_unmap=A single_ns_per_doorbell=B batch_ns_per_doorbell=C
 *   batch_ns_per_entry=D rounds=N failures=F
 * followed by " batch_entries=K" if the VMM takes K != 128 entries per doorbell.
 */
#define APDMA_BENCH_PAGES	128
#define APDMA_BENCH_MAX		100000
#define APDMA_BENCH_LEN		SZ_4K

struct apdma_bench {
	struct page *pages[APDMA_BENCH_PAGES];
	u64 dma[APDMA_BENCH_PAGES];
	bool mapped[APDMA_BENCH_PAGES];
	u64 single_ns, single_bells;
	u64 batch_ns, batch_bells, batch_entries;
	u64 failures;
	u32 first_error;
};

static void apdma_bench_failed(struct apdma_bench *b, u32 st)
{
	b->failures++;
	if (!b->first_error)
		b->first_error = st;
}

/* One MAP doorbell and one UNMAP doorbell of a 4 KiB piece of a scratch page. */
static void apdma_bench_single(struct apdma *ad, struct apdma_bench *b, unsigned int r)
{
	phys_addr_t pa = page_to_phys(b->pages[r % APDMA_BENCH_PAGES]);
	unsigned long flags;
	u64 t0, t1;
	u32 st;

	spin_lock_irqsave(&ad->lock, flags);
	t0 = ktime_get_ns();
	apdma_set_entry(ad, 0, APDMA_OP_MAP, pa, APDMA_BENCH_LEN);
	apdma_ring_uncounted(ad, 1);
	b->single_bells++;
	st = apdma_entry_status(ad, 0);
	if (st == APDMA_OK) {
		apdma_set_entry(ad, 0, APDMA_OP_UNMAP, le64_to_cpu(ad->cmd[0].dev_addr),
				APDMA_BENCH_LEN);
		apdma_ring_uncounted(ad, 1);
		b->single_bells++;
		st = apdma_entry_status(ad, 0);
	}
	t1 = ktime_get_ns();
	spin_unlock_irqrestore(&ad->lock, flags);
	b->single_ns += t1 - t0;
	if (st != APDMA_OK)
		apdma_bench_failed(b, st);
}

/* MAPs every scratch page, ad->batch entries per doorbell, then UNMAPs what got mapped. */
static void apdma_bench_batch(struct apdma *ad, struct apdma_bench *b)
{
	unsigned int i, k, n;
	unsigned long flags;
	u64 t0, t1;
	u32 st;

	for (i = 0; i < APDMA_BENCH_PAGES; i += n) {
		n = min_t(unsigned int, ad->batch, APDMA_BENCH_PAGES - i);
		spin_lock_irqsave(&ad->lock, flags);
		t0 = ktime_get_ns();
		for (k = 0; k < n; k++)
			apdma_set_entry(ad, k, APDMA_OP_MAP, page_to_phys(b->pages[i + k]),
					APDMA_BENCH_LEN);
		apdma_ring_uncounted(ad, n);
		for (k = 0; k < n; k++) {
			b->mapped[i + k] = apdma_entry_status(ad, k) == APDMA_OK;
			b->dma[i + k] = le64_to_cpu(ad->cmd[k].dev_addr);
		}
		t1 = ktime_get_ns();
		for (k = 0; k < n; k++) {
			st = apdma_entry_status(ad, k);
			if (st != APDMA_OK)
				apdma_bench_failed(b, st);
		}
		spin_unlock_irqrestore(&ad->lock, flags);
		b->batch_ns += t1 - t0;
		b->batch_bells++;
		b->batch_entries += n;
	}
	for (i = 0; i < APDMA_BENCH_PAGES;) {
		spin_lock_irqsave(&ad->lock, flags);
		t0 = ktime_get_ns();
		for (n = 0; i < APDMA_BENCH_PAGES && n < ad->batch; i++)
			if (b->mapped[i])
				apdma_set_entry(ad, n++, APDMA_OP_UNMAP, b->dma[i], APDMA_BENCH_LEN);
		if (!n) {
			spin_unlock_irqrestore(&ad->lock, flags);
			continue;
		}
		apdma_ring_uncounted(ad, n);
		t1 = ktime_get_ns();
		for (k = 0; k < n; k++) {
			st = apdma_entry_status(ad, k);
			if (st != APDMA_OK)
				apdma_bench_failed(b, st);
		}
		spin_unlock_irqrestore(&ad->lock, flags);
		b->batch_ns += t1 - t0;
		b->batch_bells++;
		b->batch_entries += n;
	}
}

static u64 apdma_avg(u64 total, u64 count)
{
	return count ? div64_u64(total, count) : 0;
}

static ssize_t bench_store(struct device *dev, struct device_attribute *attr, const char *buf,
			   size_t count)
{
	struct apdma *ad = dev_get_drvdata(dev);
	unsigned int n, r, rounds, i;
	struct apdma_bench *b;
	int ret;

	ret = kstrtouint(buf, 0, &n);
	if (ret)
		return ret;
	if (n < 1 || n > APDMA_BENCH_MAX)
		return -EINVAL;
	b = kzalloc(sizeof(*b), GFP_KERNEL);
	if (!b)
		return -ENOMEM;
	for (i = 0; i < APDMA_BENCH_PAGES; i++) {
		b->pages[i] = alloc_page(GFP_KERNEL);
		if (!b->pages[i]) {
			ret = -ENOMEM;
			goto out;
		}
	}
	ret = mutex_lock_interruptible(&ad->bench_lock);
	if (ret)
		goto out;
	for (r = 0; r < n; r++) {
		apdma_bench_single(ad, b, r);
		if (fatal_signal_pending(current)) {
			ret = -EINTR;
			goto out_unlock;
		}
		cond_resched();
	}
	rounds = max(n / APDMA_BENCH_PAGES, 1u);
	for (r = 0; r < rounds; r++) {
		apdma_bench_batch(ad, b);
		if (fatal_signal_pending(current)) {
			ret = -EINTR;
			goto out_unlock;
		}
		cond_resched();
	}
	scnprintf(ad->bench_result, sizeof(ad->bench_result),
		  "single_ns_per_map_unmap=%llu single_ns_per_doorbell=%llu "
		  "batch_ns_per_doorbell=%llu batch_ns_per_entry=%llu rounds=%u failures=%llu",
		  apdma_avg(b->single_ns, n), apdma_avg(b->single_ns, b->single_bells),
		  apdma_avg(b->batch_ns, b->batch_bells),
		  apdma_avg(b->batch_ns, b->batch_entries), n, b->failures);
	if (ad->batch != APDMA_BENCH_PAGES)
		scnprintf(ad->bench_result + strlen(ad->bench_result),
			  sizeof(ad->bench_result) - strlen(ad->bench_result),
			  " batch_entries=%u", ad->batch);
	dev_info(dev, "bench: %s\n", ad->bench_result);
	if (b->failures)
		dev_warn(dev, "bench: %llu entries failed, the first with %s\n", b->failures,
			 apdma_status_name(b->first_error));
	ret = count;
out_unlock:
	mutex_unlock(&ad->bench_lock);
out:
	for (i = 0; i < APDMA_BENCH_PAGES && b->pages[i]; i++)
		__free_page(b->pages[i]);
	kfree(b);
	return ret;
}
static DEVICE_ATTR_WO(bench);

/* The last bench's line (see bench_store), or "none". */
static ssize_t bench_result_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct apdma *ad = dev_get_drvdata(dev);
	ssize_t ret;

	ret = mutex_lock_interruptible(&ad->bench_lock);
	if (ret)
		return ret;
	ret = sysfs_emit(buf, "%s\n", ad->bench_result[0] ? ad->bench_result : "none");
	mutex_unlock(&ad->bench_lock);
	return ret;
}
static DEVICE_ATTR_RO(bench_result);

static struct attribute *apdma_attrs[] = {
	&dev_attr_target.attr,
	&dev_attr_installed.attr,
	&dev_attr_limits.attr,
	&dev_attr_limit_bytes.attr,
	&dev_attr_host_live.attr,
	&dev_attr_maps.attr,
	&dev_attr_unmaps.attr,
	&dev_attr_map_failures.attr,
	&dev_attr_unmap_failures.attr,
	&dev_attr_doorbells.attr,
	&dev_attr_live_maps.attr,
	&dev_attr_live_bytes.attr,
	&dev_attr_peak_bytes.attr,
	&dev_attr_last_error.attr,
	&dev_attr_flush.attr,
	&dev_attr_bench.attr,
	&dev_attr_bench_result.attr,
	NULL,
};
ATTRIBUTE_GROUPS(apdma);

/* --- setup and teardown (shared with the selftest) ------------------------------------ */

/*
 * Reads the window's registers, hands the VMM a command page, finds the target and takes
 * over its DMA (now, or when its driver binds next). ad->dev, ad->domain and the register
 * access are set up by the caller; drvdata of ad->dev is ad.
 */
static int apdma_setup(struct apdma *ad)
{
	struct device *d = ad->dev;
	struct apdma *other;
	struct pci_dev *t;
	phys_addr_t cmd_pa;
	unsigned long flags;
	bool busy = false, bound;
	const char *drv;
	u32 magic, st;
	int ret;

	ad->ops = aperture_dma_ops;
	spin_lock_init(&ad->lock);
	mutex_init(&ad->bench_lock);
	ratelimit_state_init(&ad->rs, 5 * HZ, 10);

	magic = apdma_rd(ad, REG_MAGIC);
	if (magic != APDMA_MAGIC)
		return dev_err_probe(d, -ENODEV, "BAR0 MAGIC is %#010x, not %#010x (\"APDM\"): not an "
				     "Aperture DMA window\n", magic, APDMA_MAGIC);
	ad->version = apdma_rd(ad, REG_VERSION);
	if (ad->version >> 16 != APDMA_MAJOR)
		return dev_err_probe(d, -ENODEV, "protocol version %u.%u is not supported (this "
				     "driver speaks %u.x): use a matching aperture_dma module and VMM\n",
				     ad->version >> 16, ad->version & 0xffff, APDMA_MAJOR);
	ad->features = apdma_rd(ad, REG_FEATURES);
	ad->rid = apdma_rd(ad, REG_TARGET_RID);
	ad->limit_bytes = (u64)apdma_rd(ad, REG_LIMIT_BYTES_HI) << 32 |
			  apdma_rd(ad, REG_LIMIT_BYTES_LO);
	ad->limit_maps = apdma_rd(ad, REG_LIMIT_MAPS);
	ad->granule = apdma_rd(ad, REG_GRANULE);
	ad->max_entries = apdma_rd(ad, REG_MAX_ENTRIES);
	if (!ad->max_entries)
		return dev_err_probe(d, -ENODEV, "MAX_ENTRIES is 0\n");
	if (!ad->granule || !is_power_of_2(ad->granule)) {
		dev_warn(d, "GRANULE %u is not a power of two: assuming %lu\n", ad->granule, PAGE_SIZE);
		ad->granule = PAGE_SIZE;
	}
	ad->batch = min_t(u32, ad->max_entries, APDMA_PAGE_ENTRIES);
	if (!(ad->features & APDMA_FEAT_BATCH))
		ad->batch = 1;

	/* The command page: plain guest RAM, read and written by the VMM at its guest
	 * physical address (the window device itself does no DMA). */
	ad->cmd = (struct apdma_entry *)__get_free_page(GFP_KERNEL | __GFP_ZERO);
	if (!ad->cmd)
		return -ENOMEM;
	cmd_pa = virt_to_phys(ad->cmd);
	apdma_wr(ad, REG_CMD_ADDR_HI, upper_32_bits(cmd_pa));
	apdma_wr(ad, REG_CMD_ADDR_LO, lower_32_bits(cmd_pa));

	/* A NOP proves the VMM reads and writes the page. */
	spin_lock_irqsave(&ad->lock, flags);
	apdma_set_entry(ad, 0, APDMA_OP_NOP, 0, 0);
	apdma_ring(ad, 1);
	st = apdma_entry_status(ad, 0);
	spin_unlock_irqrestore(&ad->lock, flags);
	if (st != APDMA_OK) {
		dev_err(d, "NOP through the command page at %pa failed: %s\n", &cmd_pa,
			apdma_status_name(st));
		ret = -EIO;
		goto err_page;
	}

	t = apdma_find_target(ad);
	if (IS_ERR(t)) {
		ret = PTR_ERR(t);
		goto err_page;
	}
	ad->target = t;

	mutex_lock(&apdma_list_lock);
	list_for_each_entry(other, &apdma_list, node)
		busy |= other->target == t;
	if (!busy)
		list_add_tail(&ad->node, &apdma_list);
	mutex_unlock(&apdma_list_lock);
	if (busy) {
		dev_err(d, "%s already has a DMA window (several windows with target= set?)\n",
			pci_name(t));
		ret = -EBUSY;
		goto err_target;
	}

	ad->nb.notifier_call = apdma_bus_notify;
	ret = bus_register_notifier(&pci_bus_type, &ad->nb);
	if (ret)
		goto err_list;

	dev_info(d, "window %u.%u for %s: %llu bytes, %u maps, granule %u, %u entries per doorbell\n",
		 ad->version >> 16, ad->version & 0xffff, pci_name(t), ad->limit_bytes,
		 ad->limit_maps, ad->granule, ad->batch);

	device_lock(&t->dev);
	bound = t->dev.driver != NULL;
	drv = bound ? t->dev.driver->name : NULL;
	if (!bound)
		apdma_install(ad);
	device_unlock(&t->dev);
	if (!bound)
		return 0;

	if (rebind) {
		dev_info(d, "%s is driven by %s: rebinding it through the window\n", pci_name(t), drv);
		device_release_driver(&t->dev);
		ret = device_attach(&t->dev);
		if (ret < 0)
			dev_err(d, "rebinding %s failed: %d\n", pci_name(t), ret);
		return 0;
	}
	dev_err(d, "%s is already driven by %s, whose DMA bypasses the window: load aperture_dma "
		"before %s, or rebind it (echo %s > /sys/bus/pci/drivers/%s/unbind; echo %s > "
		"/sys/bus/pci/drivers/%s/bind), or load aperture_dma with rebind=1\n",
		pci_name(t), drv, drv, pci_name(t), drv, pci_name(t), drv);
	return 0;

err_list:
	mutex_lock(&apdma_list_lock);
	list_del(&ad->node);
	mutex_unlock(&apdma_list_lock);
err_target:
	pci_dev_put(t);
err_page:
	apdma_wr(ad, REG_CMD_ADDR_LO, 0);
	apdma_wr(ad, REG_CMD_ADDR_HI, 0);
	free_page((unsigned long)ad->cmd);
	return ret;
}

static void apdma_teardown(struct apdma *ad)
{
	struct device *tdev = &ad->target->dev;
	bool bound;

	device_lock(tdev);
	ad->removing = true;	/* no more installs from the notifier */
	bound = tdev->driver && tdev->dma_ops == &ad->ops;
	if (!bound)
		apdma_uninstall(ad);
	device_unlock(tdev);
	if (bound) {
		dev_warn(ad->dev, "unbinding %s from %s: its DMA mappings cannot outlive the window\n",
			 pci_name(ad->target), tdev->driver ? tdev->driver->name : "its driver");
		device_release_driver(tdev);	/* the notifier drops the module reference */
	}
	bus_unregister_notifier(&pci_bus_type, &ad->nb);

	device_lock(tdev);
	apdma_uninstall(ad);
	if (ad->holds_module) {
		ad->holds_module = false;
		module_put(THIS_MODULE);
	}
	device_unlock(tdev);

	mutex_lock(&apdma_list_lock);
	list_del(&ad->node);
	mutex_unlock(&apdma_list_lock);
	apdma_wr(ad, REG_CMD_ADDR_LO, 0);
	apdma_wr(ad, REG_CMD_ADDR_HI, 0);
	free_page((unsigned long)ad->cmd);
	pci_dev_put(ad->target);
}

#ifndef APDMA_SELFTEST
/* --- the PCI driver ------------------------------------------------------------------- */

static int apdma_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct device *d = &pdev->dev;
	struct apdma *ad;
	int ret;

	ad = devm_kzalloc(d, sizeof(*ad), GFP_KERNEL);
	if (!ad)
		return -ENOMEM;
	ad->dev = d;
	ad->domain = pci_domain_nr(pdev->bus);
	ret = pcim_enable_device(pdev);
	if (ret)
		return dev_err_probe(d, ret, "cannot enable the device\n");
	if (!(pci_resource_flags(pdev, 0) & IORESOURCE_MEM) ||
	    pci_resource_len(pdev, 0) < APDMA_REGS_LEN)
		return dev_err_probe(d, -ENODEV, "BAR0 is not a memory BAR of at least %u bytes\n",
				     APDMA_REGS_LEN);
	ret = pcim_iomap_regions(pdev, BIT(0), KBUILD_MODNAME);
	if (ret)
		return dev_err_probe(d, ret, "cannot map BAR0\n");
	ad->regs = pcim_iomap_table(pdev)[0];
	pci_set_drvdata(pdev, ad);
	return apdma_setup(ad);
}

static void apdma_remove(struct pci_dev *pdev)
{
	apdma_teardown(pci_get_drvdata(pdev));
}

static const struct pci_device_id apdma_ids[] = {
	{ PCI_DEVICE(APDMA_VENDOR, APDMA_DEVICE) },
	{ }
};
MODULE_DEVICE_TABLE(pci, apdma_ids);

static struct pci_driver apdma_driver = {
	.name = KBUILD_MODNAME,
	.id_table = apdma_ids,
	.probe = apdma_probe,
	.remove = apdma_remove,
	.dev_groups = apdma_groups,
};
module_pci_driver(apdma_driver);

MODULE_DESCRIPTION("Aperture paravirtual DMA window: maps a passed-through device's DMA through the VMM");
MODULE_AUTHOR("Aperture developers");
MODULE_LICENSE("Dual MIT/GPL");
#endif /* !APDMA_SELFTEST */
