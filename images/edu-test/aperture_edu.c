// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * aperture_edu: DMA round trips through QEMU's "edu" device, the GPU-like stand-in of
 * Aperture's e2e rig (MSI only, one vector, no FLR, a DMA engine that honours a DMA mask
 * and drops address bits above it, like a Turing GPU's 40-bit DMA).
 *
 * On load it binds the first edu (1234:11e8), sets its DMA mask and coherent mask to
 * mask_bits, then for `rounds` rounds moves a 4 KiB pattern RAM -> edu -> RAM through the
 * DMA API: dma_map_single, dma_map_page and dma_alloc_coherent (each a round trip: one DMA
 * to the device's buffer, one back), every DMA completed by edu's MSI. With big=1 it also
 * maps 2 MiB (dma_map_page of an order-9 block) and checks that the device address is
 * 2 MiB aligned, then moves data through the map's last 4 KiB. Every byte is checked.
 * It prints exactly one verdict line:
 *   aperture_edu: PASS <n> round trips, <k> irqs
 *   aperture_edu: FAIL <why>
 * and, with timing=1, `aperture_edu: timing <ns> ns per round trip (<mode>)` and
 * `aperture_edu: timing <ns> ns per map+unmap (<mode>)` before it (mode: "window" when
 * the device has DMA ops of its own, e.g. aperture_dma's, else "identity").
 *
 * edu's registers (QEMU docs/specs/edu.rst): 0x00 identification (0xRRrr00ed), 0x24
 * interrupt status, 0x64 interrupt acknowledge, 0x80 DMA source, 0x88 DMA destination,
 * 0x90 DMA count, 0x98 DMA command (bit 0 start/busy, bit 1 direction: 0 RAM -> edu,
 * 1 edu -> RAM, bit 2 raise interrupt 0x100 on completion). Its buffer is at 0x40000,
 * 4 KiB. QEMU completes each DMA from a timer about 100 ms later, so a round trip takes
 * ~200 ms whatever the map costs; the map+unmap line is the figure to compare.
 */

#include <linux/module.h>
#include <linux/pci.h>
#include <linux/interrupt.h>
#include <linux/dma-mapping.h>
#include <linux/completion.h>
#include <linux/slab.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/io.h>
#include <linux/ktime.h>
#include <linux/sizes.h>
#include <linux/dma-map-ops.h>	/* get_dma_ops(): NULL where the kernel has no DMA ops */

#define EDU_VENDOR		0x1234
#define EDU_DEVICE		0x11e8
#define EDU_REG_ID		0x00
#define EDU_REG_IRQ_STATUS	0x24
#define EDU_REG_IRQ_ACK		0x64
#define EDU_REG_DMA_SRC		0x80
#define EDU_REG_DMA_DST		0x88
#define EDU_REG_DMA_COUNT	0x90
#define EDU_REG_DMA_CMD		0x98
#define EDU_DMA_START		BIT(0)
#define EDU_DMA_TO_RAM		BIT(1)
#define EDU_DMA_IRQ		BIT(2)
#define EDU_IRQ_DMA		0x100
#define EDU_BUF			0x40000
#define EDU_BUF_LEN		SZ_4K
#define EDU_BIG_ORDER		9	/* 2 MiB with 4 KiB pages */
#define EDU_DMA_TIMEOUT_MS	5000

static unsigned int mask_bits = 40;
module_param(mask_bits, uint, 0444);
MODULE_PARM_DESC(mask_bits, "DMA mask and coherent mask width in bits (default 40, 32..64)");

static unsigned int rounds = 2;
module_param(rounds, uint, 0444);
MODULE_PARM_DESC(rounds, "rounds of the three round trips (single, page, coherent; default 2)");

static bool timing;
module_param(timing, bool, 0444);
MODULE_PARM_DESC(timing, "print the time per round trip and per map+unmap in ns");

static bool big;
module_param(big, bool, 0444);
MODULE_PARM_DESC(big, "also map 2 MiB and check its device address is 2 MiB aligned");

struct edu {
	struct pci_dev *pdev;
	void __iomem *regs;
	int irq;
	struct completion done;
	atomic_t irqs;
	u8 *scratch;		/* what the last DMA to RAM should have written */
	u64 trips;
	u64 trip_ns;
	u64 maps;
	u64 map_ns;
	char why[160];
};

static bool edu_probed;

static irqreturn_t edu_irq(int irq, void *data)
{
	struct edu *edu = data;
	u32 status = readl(edu->regs + EDU_REG_IRQ_STATUS);

	if (!status)
		return IRQ_NONE;
	writel(status, edu->regs + EDU_REG_IRQ_ACK);
	atomic_inc(&edu->irqs);
	if (status & EDU_IRQ_DMA)
		complete(&edu->done);
	return IRQ_HANDLED;
}

/* One DMA of len bytes between device address `ram` and edu's buffer; waits for its MSI. */
static int edu_dma(struct edu *edu, dma_addr_t ram, size_t len, bool to_ram)
{
	u64 cmd = EDU_DMA_START | EDU_DMA_IRQ | (to_ram ? EDU_DMA_TO_RAM : 0);

	reinit_completion(&edu->done);
	writeq(to_ram ? EDU_BUF : ram, edu->regs + EDU_REG_DMA_SRC);
	writeq(to_ram ? ram : EDU_BUF, edu->regs + EDU_REG_DMA_DST);
	writeq(len, edu->regs + EDU_REG_DMA_COUNT);
	writeq(cmd, edu->regs + EDU_REG_DMA_CMD);
	if (!wait_for_completion_timeout(&edu->done, msecs_to_jiffies(EDU_DMA_TIMEOUT_MS))) {
		snprintf(edu->why, sizeof(edu->why),
			 "no DMA completion interrupt within %u ms (DMA %s at %pad, command %#llx)",
			 EDU_DMA_TIMEOUT_MS, to_ram ? "to RAM" : "from RAM", &ram,
			 readq(edu->regs + EDU_REG_DMA_CMD));
		return -ETIMEDOUT;
	}
	if (readq(edu->regs + EDU_REG_DMA_CMD) & EDU_DMA_START) {
		snprintf(edu->why, sizeof(edu->why), "interrupt before the DMA finished");
		return -EIO;
	}
	return 0;
}

static void edu_fill(u8 *buf, size_t len, u32 seed)
{
	size_t i;

	for (i = 0; i < len; i++)
		buf[i] = (u8)(seed * 131 + i * 7 + (i >> 8));
}

/* Checks buf against the pattern of seed; names the first bad byte. */
static int edu_check(struct edu *edu, const u8 *buf, size_t len, u32 seed, const char *what)
{
	size_t i;

	for (i = 0; i < len; i++) {
		u8 want = (u8)(seed * 131 + i * 7 + (i >> 8));

		if (buf[i] != want) {
			snprintf(edu->why, sizeof(edu->why),
				 "%s: byte %zu is %#x, want %#x (the DMA went elsewhere)",
				 what, i, buf[i], want);
			return -EIO;
		}
	}
	return 0;
}

static int edu_mapping_error(struct edu *edu, dma_addr_t dma, size_t len, const char *what)
{
	if (!dma_mapping_error(&edu->pdev->dev, dma))
		return 0;
	snprintf(edu->why, sizeof(edu->why), "%s of %zu bytes failed (DMA_MAPPING_ERROR)", what,
		 len);
	return -ENOMEM;
}

/* The device address must be within the mask: edu drops higher bits (QEMU clamps). */
static int edu_check_addr(struct edu *edu, dma_addr_t dma, size_t len, const char *what)
{
	u64 mask = DMA_BIT_MASK(mask_bits);

	if (dma + len - 1 <= mask)
		return 0;
	snprintf(edu->why, sizeof(edu->why), "%s: device address %pad + %zu is over the %u-bit mask",
		 what, &dma, len, mask_bits);
	return -ERANGE;
}

static void edu_time_map(struct edu *edu, ktime_t start)
{
	edu->maps++;
	edu->map_ns += ktime_to_ns(ktime_sub(ktime_get(), start));
}

/*
 * One DMA through a streaming map of buf for just that DMA: dma_map_page of buf's page
 * (page) or dma_map_single, to the edu's buffer (to_ram false) or from it.
 */
static int edu_streaming_dma(struct edu *edu, void *buf, size_t len, bool page, bool to_ram)
{
	struct device *dev = &edu->pdev->dev;
	enum dma_data_direction dir = to_ram ? DMA_FROM_DEVICE : DMA_TO_DEVICE;
	const char *what = page ? "dma_map_page" : "dma_map_single";
	ktime_t t = ktime_get();
	dma_addr_t dma;
	int ret;

	dma = page ? dma_map_page(dev, virt_to_page(buf), offset_in_page(buf), len, dir)
		   : dma_map_single(dev, buf, len, dir);
	edu_time_map(edu, t);
	ret = edu_mapping_error(edu, dma, len, what);
	if (ret)
		return ret;
	ret = edu_check_addr(edu, dma, len, what);
	if (!ret)
		ret = edu_dma(edu, dma, len, to_ram);
	t = ktime_get();
	if (page)
		dma_unmap_page(dev, dma, len, dir);
	else
		dma_unmap_single(dev, dma, len, dir);
	edu->map_ns += ktime_to_ns(ktime_sub(ktime_get(), t));
	return ret;
}

/* Round trip through streaming maps: src (pattern) -> edu -> dst, each mapped for its DMA. */
static int edu_streaming_trip(struct edu *edu, void *src, void *dst, bool page, u32 seed,
			      size_t len)
{
	int ret;

	edu_fill(src, len, seed);
	memset(dst, 0, len);
	ret = edu_streaming_dma(edu, src, len, page, false);
	if (!ret)
		ret = edu_streaming_dma(edu, dst, len, page, true);
	if (!ret)
		ret = edu_check(edu, dst, len, seed, page ? "dma_map_page" : "dma_map_single");
	return ret;
}

/* Round trip through one coherent buffer: pattern -> edu, zero, edu -> the same buffer. */
static int edu_coherent_trip(struct edu *edu, u32 seed)
{
	struct device *dev = &edu->pdev->dev;
	dma_addr_t dma;
	ktime_t t;
	void *cpu;
	int ret;

	t = ktime_get();
	cpu = dma_alloc_coherent(dev, EDU_BUF_LEN, &dma, GFP_KERNEL);
	edu_time_map(edu, t);
	if (!cpu) {
		snprintf(edu->why, sizeof(edu->why), "dma_alloc_coherent of %u bytes failed",
			 EDU_BUF_LEN);
		return -ENOMEM;
	}
	ret = edu_check_addr(edu, dma, EDU_BUF_LEN, "dma_alloc_coherent");
	if (!ret) {
		edu_fill(cpu, EDU_BUF_LEN, seed);
		ret = edu_dma(edu, dma, EDU_BUF_LEN, false);
	}
	if (!ret) {
		memset(cpu, 0, EDU_BUF_LEN);
		ret = edu_dma(edu, dma, EDU_BUF_LEN, true);
	}
	if (!ret)
		ret = edu_check(edu, cpu, EDU_BUF_LEN, seed, "dma_alloc_coherent");
	t = ktime_get();
	dma_free_coherent(dev, EDU_BUF_LEN, cpu, dma);
	edu->map_ns += ktime_to_ns(ktime_sub(ktime_get(), t));
	return ret;
}

/*
 * 2 MiB, physically 2 MiB aligned, mapped whole in both directions: the device address must
 * be 2 MiB aligned (what GPUs' large pages need), and the map's last 4 KiB must reach RAM.
 */
static int edu_big_trip(struct edu *edu, u32 seed)
{
	struct device *dev = &edu->pdev->dev;
	size_t len = PAGE_SIZE << EDU_BIG_ORDER, tail = len - EDU_BUF_LEN;
	struct page *page;
	dma_addr_t dma;
	u8 *cpu;
	int ret;

	if (len != SZ_2M) {
		snprintf(edu->why, sizeof(edu->why), "big=1 needs 4 KiB pages");
		return -EINVAL;
	}
	page = alloc_pages(GFP_KERNEL | __GFP_ZERO, EDU_BIG_ORDER);
	if (!page) {
		snprintf(edu->why, sizeof(edu->why), "no 2 MiB block of guest memory for big=1");
		return -ENOMEM;
	}
	cpu = page_address(page);
	edu_fill(cpu + tail, EDU_BUF_LEN, seed);
	dma = dma_map_page(dev, page, 0, len, DMA_BIDIRECTIONAL);
	ret = edu_mapping_error(edu, dma, len, "2 MiB dma_map_page");
	if (ret)
		goto out;
	pr_info("aperture_edu: 2 MiB map of %pa at device address %pad\n",
		&(phys_addr_t){ page_to_phys(page) }, &dma);
	ret = edu_check_addr(edu, dma, len, "2 MiB dma_map_page");
	if (!ret && !IS_ALIGNED(dma, SZ_2M)) {
		snprintf(edu->why, sizeof(edu->why),
			 "2 MiB map at device address %pad is not 2 MiB aligned", &dma);
		ret = -EINVAL;
	}
	if (!ret)
		ret = edu_dma(edu, dma + tail, EDU_BUF_LEN, false);
	if (!ret) {
		memset(cpu + tail, 0, EDU_BUF_LEN);
		ret = edu_dma(edu, dma + tail, EDU_BUF_LEN, true);
	}
	dma_unmap_page(dev, dma, len, DMA_BIDIRECTIONAL);
	if (!ret)
		ret = edu_check(edu, cpu + tail, EDU_BUF_LEN, seed, "2 MiB dma_map_page");
out:
	__free_pages(page, EDU_BIG_ORDER);
	return ret;
}

static const char *edu_mode(struct edu *edu)
{
	return get_dma_ops(&edu->pdev->dev) ? "window" : "identity";
}

static int edu_trip(struct edu *edu, int (*trip)(struct edu *, u32), u32 seed)
{
	ktime_t t = ktime_get();
	int ret = trip(edu, seed);

	if (!ret) {
		edu->trips++;
		edu->trip_ns += ktime_to_ns(ktime_sub(ktime_get(), t));
	}
	return ret;
}

static int edu_single(struct edu *edu, u32 seed)
{
	return edu_streaming_trip(edu, edu->scratch, edu->scratch + EDU_BUF_LEN, false, seed,
				  EDU_BUF_LEN);
}

static int edu_page(struct edu *edu, u32 seed)
{
	return edu_streaming_trip(edu, edu->scratch + 2 * EDU_BUF_LEN,
				  edu->scratch + 3 * EDU_BUF_LEN, true, seed, EDU_BUF_LEN);
}

static int edu_run(struct edu *edu)
{
	unsigned int r;
	int ret;
	u32 id = readl(edu->regs + EDU_REG_ID);

	if ((id & 0xff) != 0xed) {
		snprintf(edu->why, sizeof(edu->why), "identification register reads %#x, not an edu",
			 id);
		return -ENODEV;
	}
	ret = dma_set_mask_and_coherent(&edu->pdev->dev, DMA_BIT_MASK(mask_bits));
	if (ret) {
		snprintf(edu->why, sizeof(edu->why), "dma_set_mask_and_coherent(%u bits): %d",
			 mask_bits, ret);
		return ret;
	}
	for (r = 0; r < rounds; r++) {
		ret = edu_trip(edu, edu_single, 3 * r + 1);
		if (!ret)
			ret = edu_trip(edu, edu_page, 3 * r + 2);
		if (!ret)
			ret = edu_trip(edu, edu_coherent_trip, 3 * r + 3);
		if (ret)
			return ret;
	}
	if (big)
		return edu_trip(edu, edu_big_trip, 0x5a);
	return 0;
}

static int edu_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct edu *edu;
	int ret;

	/* One verdict line per load: the first edu only. */
	if (edu_probed)
		return -EBUSY;
	edu_probed = true;
	if (mask_bits < 32 || mask_bits > 64) {
		pr_info("aperture_edu: FAIL mask_bits=%u is not in 32..64\n", mask_bits);
		return -EINVAL;
	}
	edu = devm_kzalloc(&pdev->dev, sizeof(*edu), GFP_KERNEL);
	if (!edu) {
		pr_info("aperture_edu: FAIL out of memory\n");
		return -ENOMEM;
	}
	edu->pdev = pdev;
	init_completion(&edu->done);
	ret = pcim_enable_device(pdev);
	if (ret) {
		pr_info("aperture_edu: FAIL pci_enable_device: %d\n", ret);
		return ret;
	}
	edu->regs = pcim_iomap(pdev, 0, 0);
	if (!edu->regs) {
		pr_info("aperture_edu: FAIL cannot map BAR0\n");
		return -ENOMEM;
	}
	pci_set_master(pdev);
	ret = pci_alloc_irq_vectors(pdev, 1, 1, PCI_IRQ_MSI);
	if (ret < 0) {
		pr_info("aperture_edu: FAIL no MSI vector: %d\n", ret);
		return ret;
	}
	edu->irq = pci_irq_vector(pdev, 0);
	ret = request_irq(edu->irq, edu_irq, 0, "aperture_edu", edu);
	if (ret) {
		pci_free_irq_vectors(pdev);
		pr_info("aperture_edu: FAIL request_irq(%d): %d\n", edu->irq, ret);
		return ret;
	}
	/* Four 4 KiB buffers in one block: single src/dst, page src/dst (page aligned). */
	edu->scratch = (u8 *)__get_free_pages(GFP_KERNEL, 2);
	if (!edu->scratch) {
		free_irq(edu->irq, edu);
		pci_free_irq_vectors(pdev);
		pr_info("aperture_edu: FAIL out of memory\n");
		return -ENOMEM;
	}
	ret = edu_run(edu);
	free_pages((unsigned long)edu->scratch, 2);
	if (timing && edu->trips) {
		pr_info("aperture_edu: timing %llu ns per round trip (%s)\n",
			div64_u64(edu->trip_ns, edu->trips), edu_mode(edu));
		pr_info("aperture_edu: timing %llu ns per map+unmap (%s)\n",
			div64_u64(edu->map_ns, max_t(u64, edu->maps, 1)), edu_mode(edu));
	}
	if (ret)
		pr_info("aperture_edu: FAIL %s\n", edu->why);
	else
		pr_info("aperture_edu: PASS %llu round trips, %d irqs\n", edu->trips,
			atomic_read(&edu->irqs));
	/* Stay bound either way: /proc/interrupts keeps the vector's count. */
	pci_set_drvdata(pdev, edu);
	return 0;
}

static void edu_remove(struct pci_dev *pdev)
{
	struct edu *edu = pci_get_drvdata(pdev);

	free_irq(edu->irq, edu);
	pci_free_irq_vectors(pdev);
}

static const struct pci_device_id edu_ids[] = {
	{ PCI_DEVICE(EDU_VENDOR, EDU_DEVICE) },
	{ }
};
MODULE_DEVICE_TABLE(pci, edu_ids);

static struct pci_driver edu_driver = {
	.name = "aperture_edu",
	.id_table = edu_ids,
	.probe = edu_probe,
	.remove = edu_remove,
};

static int __init edu_init(void)
{
	int ret = pci_register_driver(&edu_driver);

	if (ret) {
		pr_info("aperture_edu: FAIL pci_register_driver: %d\n", ret);
		return ret;
	}
	/* PCI probes synchronously here: no probe means no edu. */
	if (!edu_probed) {
		pr_info("aperture_edu: FAIL no edu device (%04x:%04x)\n", EDU_VENDOR, EDU_DEVICE);
		pci_unregister_driver(&edu_driver);
		return -ENODEV;
	}
	return 0;
}

static void __exit edu_exit(void)
{
	pci_unregister_driver(&edu_driver);
}

module_init(edu_init);
module_exit(edu_exit);
MODULE_DESCRIPTION("DMA round trips through QEMU's edu device (Aperture e2e)");
MODULE_LICENSE("Dual MIT/GPL");
