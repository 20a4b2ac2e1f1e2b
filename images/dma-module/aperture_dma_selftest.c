// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * aperture_dma_selftest: aperture_dma's own code (this file includes aperture_dma.c) run
 * against a software model of the VMM's side of the DMA window protocol, to try the guest
 * driver where no Aperture host with a window exists, e.g. under QEMU with an emulated NVMe:
 *
 *   insmod aperture_dma_selftest.ko [target=BDF] [limit_kib=N] [limit_maps=N] [granule=N]
 *          [entries=N] [batch=0|1]          # then load the target's driver (nvme)
 *
 * It registers /sys/devices/aperture_dma_selftest (same attributes as a real window's PCI
 * function) and takes over the DMA of target= (default: the first NVMe controller) exactly as
 * aperture_dma does. The model, called where the real driver traps to the VMM, checks what a
 * host checks (zero or wrapping lengths, guest RAM, entries per doorbell), charges whole
 * granules per mapping against limit_kib and limit_maps (strictly: no shared windows, so it
 * runs out sooner than Aperture), and fails an UNMAP that does not name a live MAP exactly.
 * Device addresses are the guest-physical ones (identity), because QEMU's emulated devices
 * DMA to guest-physical addresses: so this is not for a guest whose device sits behind a
 * real window. Only one instance; not loaded together with a real window on the same target.
 *
 * Protocol 1.1 (proto=11, the default; proto=10 models a 1.0 host): the model honours an
 * entry's mask_bits (EMASK when the identity address is over it) and align_log2 (EALIGN when
 * it is not aligned). At load it first checks the guest's mask and alignment rules against
 * the model (2 MiB maps: the op word's align_log2, an EMASK, a misaligned address from a
 * host that ignores the rule) and prints `aperture_dma_selftest: rules PASS <n> cases` or
 * `aperture_dma_selftest: rules FAIL <why>`.
 */
#define APDMA_SELFTEST
#include "aperture_dma.c"

static unsigned int limit_kib = 8192;
module_param(limit_kib, uint, 0444);
MODULE_PARM_DESC(limit_kib, "the model's byte limit in KiB (mappings cost whole granules)");
static unsigned int limit_maps = 4096;
module_param(limit_maps, uint, 0444);
MODULE_PARM_DESC(limit_maps, "the model's limit on live mappings");
static unsigned int granule = 16384;
module_param(granule, uint, 0444);
MODULE_PARM_DESC(granule, "the model's mapping granule in bytes (power of two)");
static unsigned int entries = 128;
module_param(entries, uint, 0444);
MODULE_PARM_DESC(entries, "MAX_ENTRIES the model announces");
static bool batch = true;
module_param(batch, bool, 0444);
MODULE_PARM_DESC(batch, "announce the BATCH feature (several entries per doorbell)");
static unsigned int proto = 11;
module_param(proto, uint, 0444);
MODULE_PARM_DESC(proto, "protocol version the model speaks: 11 (MASK, ALIGN) or 10");

struct model_map {
	u64 addr, len, dev, cost;
};

static struct {
	u64 misalign;		/* rules test: added to every large map's device address */
	u32 last_map_op;	/* rules test: the op word of the last MAP */
	u64 cmd_pa;
	u32 status, done;
	u32 rid;
	u32 live;		/* live mappings */
	u64 live_cost;		/* their cost in whole granules, bytes */
	struct model_map *maps;	/* limit_maps of them */
} model;

static struct device *st_dev;
static struct apdma *st_ad;

static u64 model_cost(u64 addr, u64 len)
{
	return ALIGN(addr + len, (u64)granule) - ALIGN_DOWN(addr, (u64)granule);
}

static u32 model_entry(struct apdma_entry *e)
{
	u64 addr = le64_to_cpu(e->addr), len = le64_to_cpu(e->len), cost, dev;
	u32 op = le32_to_cpu(e->op), mask_bits = (op >> 8) & 0xff, align_log2 = (op >> 16) & 0xff;
	u32 i;

	/* A 1.0 host knows no bits above the op; 1.1 only on MAP, bits 31..24 reserved. */
	if (op & ~0xffu) {
		if (proto < 11)
			return APDMA_EOPNOTSUPP;
		if ((op & 0xff) != APDMA_OP_MAP || (op >> 24))
			return APDMA_EINVAL;
		if ((mask_bits && (mask_bits < 12 || mask_bits > 64)) ||
		    (align_log2 && (align_log2 < 12 || align_log2 > 21)))
			return APDMA_EINVAL;
	}
	switch (op & 0xff) {
	case APDMA_OP_NOP:
	case APDMA_OP_FLUSH:
		return APDMA_OK;
	case APDMA_OP_MAP:
		model.last_map_op = op;
		if (!len || addr + len < addr)
			return APDMA_EINVAL;
		if (!pfn_valid(PHYS_PFN(addr)) || !pfn_valid(PHYS_PFN(addr + len - 1)))
			return APDMA_ERANGE;
		dev = addr + (len >= SZ_64K ? model.misalign : 0);
		if (mask_bits && mask_bits < 64 && dev + len - 1 >= BIT_ULL(mask_bits))
			return APDMA_EMASK;
		if (align_log2 && !IS_ALIGNED(dev, BIT_ULL(align_log2)))
			return APDMA_EALIGN;
		cost = model_cost(addr, len);
		if (model.live >= limit_maps || model.live_cost + cost > (u64)limit_kib << 10)
			return APDMA_ENOSPC;
		model.maps[model.live].addr = addr;
		model.maps[model.live].len = len;
		model.maps[model.live].dev = dev;
		model.maps[model.live].cost = cost;
		model.live++;
		model.live_cost += cost;
		e->dev_addr = cpu_to_le64(dev);
		return APDMA_OK;
	case APDMA_OP_UNMAP:
		for (i = 0; i < model.live; i++) {
			if (model.maps[i].dev != addr || model.maps[i].len != len)
				continue;
			model.live_cost -= model.maps[i].cost;
			model.maps[i] = model.maps[--model.live];
			return APDMA_OK;
		}
		return APDMA_ENOENT;
	default:
		return APDMA_EOPNOTSUPP;
	}
}

static void model_doorbell(u32 n)
{
	struct apdma_entry *e;
	u32 i;

	model.done = 0;
	if (!n || n > entries || n > APDMA_PAGE_ENTRIES) {
		model.status = APDMA_EINVAL;
		return;
	}
	if (!model.cmd_pa || !IS_ALIGNED(model.cmd_pa, APDMA_CMD_PAGE) ||
	    !pfn_valid(PHYS_PFN(model.cmd_pa))) {
		model.status = APDMA_ERANGE;
		return;
	}
	e = phys_to_virt(model.cmd_pa);
	for (i = 0; i < n; i++)
		e[i].status = cpu_to_le32(model_entry(&e[i]));
	model.status = APDMA_OK;
	model.done = n;
}

static u32 apdma_rd(struct apdma *ad, unsigned int reg)
{
	u64 limit = (u64)limit_kib << 10;

	switch (reg) {
	case REG_MAGIC: return APDMA_MAGIC;
	case REG_VERSION: return APDMA_MAJOR << 16 | (proto >= 11 ? 1 : 0);
	case REG_FEATURES: return (batch ? APDMA_FEAT_BATCH : 0) | APDMA_FEAT_FLUSH |
				  (proto >= 11 ? APDMA_FEAT_MASK | APDMA_FEAT_ALIGN : 0);
	case REG_TARGET_RID: return model.rid;
	case REG_LIMIT_BYTES_LO: return lower_32_bits(limit);
	case REG_LIMIT_BYTES_HI: return upper_32_bits(limit);
	case REG_LIMIT_MAPS: return limit_maps;
	case REG_GRANULE: return granule;
	case REG_CMD_ADDR_LO: return lower_32_bits(model.cmd_pa);
	case REG_CMD_ADDR_HI: return upper_32_bits(model.cmd_pa);
	case REG_DOORBELL: return model.done;
	case REG_STATUS: return model.status;
	case REG_MAX_ENTRIES: return entries;
	case REG_LIVE_MAPS: return READ_ONCE(model.live);
	case REG_LIVE_KIB: return READ_ONCE(model.live_cost) >> 10;
	}
	return 0;
}

static void apdma_wr(struct apdma *ad, unsigned int reg, u32 val)
{
	switch (reg) {
	case REG_CMD_ADDR_LO:
		model.cmd_pa = (model.cmd_pa & ~0xffffffffull) | val;
		break;
	case REG_CMD_ADDR_HI:
		model.cmd_pa = lower_32_bits(model.cmd_pa) | (u64)val << 32;
		break;
	case REG_DOORBELL:
		model_doorbell(val);
		break;
	}
}

/*
 * The guest's 1.1 rules against the model, on a 2 MiB block aligned to 2 MiB: what a map
 * sends, what it accepts, and that every refused map is released again. Returns the number
 * of cases, or a negative errno with *why set.
 */
static int apdma_selftest_rules(struct apdma *ad, const char **why)
{
	struct page *page = alloc_pages(GFP_KERNEL, get_order(SZ_2M));
	u32 live = model.live, want_op;
	phys_addr_t pa;
	dma_addr_t da;
	int cases = 0;

	if (!page) {
		*why = "no 2 MiB block of guest memory";
		return -ENOMEM;
	}
	pa = page_to_phys(page);
	/* 1: a 2 MiB map asks for 2 MiB alignment and the full mask width (1.1 only). */
	da = apdma_map_range(ad, st_dev, pa, SZ_2M, DMA_BIT_MASK(64), "rules: 2 MiB map", 0);
	want_op = APDMA_OP_MAP | (proto >= 11 ? 64 << 8 | 21 << 16 : 0);
	if (da == DMA_MAPPING_ERROR || da != pa || model.last_map_op != want_op) {
		*why = "2 MiB map: wrong op word or address";
		goto fail;
	}
	apdma_unmap_range(ad, da, SZ_2M);
	cases++;
	/* 2: 64 KiB inside it at a 64 KiB boundary: 64 KiB alignment; 4 KiB maps: none. */
	da = apdma_map_range(ad, st_dev, pa + SZ_64K, SZ_64K, DMA_BIT_MASK(64), "rules: 64K", 0);
	want_op = APDMA_OP_MAP | (proto >= 11 ? 64 << 8 | 16 << 16 : 0);
	if (da == DMA_MAPPING_ERROR || model.last_map_op != want_op) {
		*why = "64 KiB map: wrong op word";
		goto fail;
	}
	apdma_unmap_range(ad, da, SZ_64K);
	da = apdma_map_range(ad, st_dev, pa + SZ_4K, SZ_4K, DMA_BIT_MASK(40), "rules: 4K", 0);
	want_op = APDMA_OP_MAP | (proto >= 11 ? 40 << 8 : 0);
	if (da == DMA_MAPPING_ERROR || model.last_map_op != want_op) {
		*why = "4 KiB map with a 40-bit mask: wrong op word";
		goto fail;
	}
	apdma_unmap_range(ad, da, SZ_4K);
	cases += 2;
	/* 3: a mask the address is over: the host's EMASK (1.1) or the guest's own check. */
	if (pa + SZ_2M - 1 > DMA_BIT_MASK(30)) {	/* arm64 virt: RAM starts at 1 GiB */
		da = apdma_map_range(ad, st_dev, pa, SZ_2M, DMA_BIT_MASK(30), "rules: over mask", 0);
		if (da != DMA_MAPPING_ERROR || model.live != live) {
			*why = "a map over a 30-bit mask was not refused and released";
			goto fail;
		}
		cases++;
	}
	/* 4: a host that returns a misaligned address for a large map: refused, released. */
	model.misalign = SZ_4K;
	da = apdma_map_range(ad, st_dev, pa, SZ_2M, DMA_BIT_MASK(64), "rules: misaligned", 0);
	model.misalign = 0;
	if (da != DMA_MAPPING_ERROR || model.live != live) {
		*why = "a misaligned 2 MiB map was not refused and released";
		goto fail;
	}
	cases++;
	__free_pages(page, get_order(SZ_2M));
	return cases;
fail:
	__free_pages(page, get_order(SZ_2M));
	return -EINVAL;
}

static int __init apdma_selftest_init(void)
{
	const char *why = "";
	struct pci_dev *nvme;
	int ret;

	if (!granule || !is_power_of_2(granule) || !limit_maps || !entries || !limit_kib)
		return -EINVAL;
	model.maps = kvcalloc(limit_maps, sizeof(*model.maps), GFP_KERNEL);
	if (!model.maps)
		return -ENOMEM;
	st_ad = kzalloc(sizeof(*st_ad), GFP_KERNEL);
	if (!st_ad) {
		ret = -ENOMEM;
		goto err_maps;
	}
	/* TARGET_RID: the first NVMe controller (target= overrides it). */
	model.rid = APDMA_RID_NONE;
	nvme = pci_get_class(PCI_CLASS_STORAGE_EXPRESS, NULL);
	if (nvme) {
		model.rid = pci_dev_id(nvme);
		st_ad->domain = pci_domain_nr(nvme->bus);
		pci_dev_put(nvme);
	}
	st_dev = root_device_register(KBUILD_MODNAME);
	if (IS_ERR(st_dev)) {
		ret = PTR_ERR(st_dev);
		goto err_ad;
	}
	st_ad->dev = st_dev;
	dev_set_drvdata(st_dev, st_ad);
	dev_warn(st_dev, "SELFTEST: a software model of the VMM with identity device addresses "
		 "(%u KiB, %u maps, granule %u)\n", limit_kib, limit_maps, granule);
	ret = apdma_setup(st_ad);
	if (ret)
		goto err_dev;
	ret = apdma_selftest_rules(st_ad, &why);
	if (ret < 0)
		pr_info("aperture_dma_selftest: rules FAIL %s\n", why);
	else
		pr_info("aperture_dma_selftest: rules PASS %d cases (protocol %u.%u)\n", ret,
			proto / 10, proto % 10);
	ret = sysfs_create_groups(&st_dev->kobj, apdma_groups);
	if (ret) {
		apdma_teardown(st_ad);
		goto err_dev;
	}
	return 0;

err_dev:
	root_device_unregister(st_dev);
err_ad:
	kfree(st_ad);
err_maps:
	kvfree(model.maps);
	return ret;
}

static void __exit apdma_selftest_exit(void)
{
	sysfs_remove_groups(&st_dev->kobj, apdma_groups);
	apdma_teardown(st_ad);
	if (model.live)
		dev_warn(st_dev, "model: %u mappings (%llu KiB) still live at exit\n", model.live,
			 model.live_cost >> 10);
	root_device_unregister(st_dev);
	kfree(st_ad);
	kvfree(model.maps);
}
module_init(apdma_selftest_init);
module_exit(apdma_selftest_exit);

MODULE_DESCRIPTION("aperture_dma against a software model of the VMM (testing without Aperture)");
MODULE_AUTHOR("Aperture developers");
MODULE_LICENSE("Dual MIT/GPL");
