// SPDX-License-Identifier: GPL-2.0
/*
 * vtrace_mig - a VFIO device that migrates, for the vmlab (nothing else).
 *
 * The lab has no device with a VFIO migration driver (mlx5, hisi_acc, pds,
 * virtio-vfio-pci all need real hardware or an admin virtqueue QEMU 7.2
 * lacks), so vtrace's `migration` point had never traced the kernel code it
 * is for. This module is the smallest driver that uses that code the way the
 * real ones do: an emulated-IOMMU vfio_device (drivers/vfio/vfio_main.c
 * vfio_register_emulated_iommu_dev) whose migration_set_state walks to the
 * requested state one arc at a time through vfio_mig_get_next_state(), the
 * kernel's migration FSM, exactly as mlx5vf_pci_set_device_state does. The
 * VFIO core answers VFIO_DEVICE_FEATURE_MIGRATION and MIG_DEVICE_STATE
 * (vfio_ioctl_device_feature_mig_device_state) for it.
 *
 * Its "device state" is STATE_BYTES of a counter pattern. STOP -> STOP_COPY
 * hands user space a data fd to read it from; STOP -> RESUMING one to write
 * it into, and RESUMING -> STOP loads what was written (the size is checked:
 * a short image is -EINVAL, as a real driver's load would fail).
 *
 * Built by tests/vmlab/lab.py build_module() against the lab kernel's own
 * Debian headers package; never part of vtrace.
 */
#include <linux/anon_inodes.h>
#include <linux/device.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/platform_device.h>
#include <linux/slab.h>
#include <linux/vfio.h>

#define STATE_BYTES 4096

struct mig_dev {
	struct vfio_device vdev;
	struct mutex lock;
	enum vfio_device_mig_state state;
	u8 regs[STATE_BYTES];
};

struct mig_file {		/* one data fd: the image being saved or resumed */
	struct mig_dev *md;
	size_t len;
	u8 buf[STATE_BYTES];
};

static struct platform_device *pdev;
static struct mig_dev *the_dev;

static ssize_t mig_read(struct file *f, char __user *buf, size_t len, loff_t *pos)
{
	struct mig_file *mf = f->private_data;

	return simple_read_from_buffer(buf, len, pos, mf->buf, mf->len);
}

static ssize_t mig_write(struct file *f, const char __user *buf, size_t len, loff_t *pos)
{
	struct mig_file *mf = f->private_data;
	ssize_t n = simple_write_to_buffer(mf->buf, sizeof(mf->buf), pos, buf, len);

	if (n > 0)
		mf->len = max_t(size_t, mf->len, *pos);
	return n;
}

static int mig_release(struct inode *inode, struct file *f)
{
	kfree(f->private_data);
	return 0;
}

static const struct file_operations mig_fops = {
	.owner = THIS_MODULE,
	.read = mig_read,
	.write = mig_write,
	.release = mig_release,
	.llseek = no_llseek,
};

/* The resuming fd stays open in user space after RESUMING -> STOP; the
 * image is taken from the file the device handed out, held here. */
static struct file *resuming;

static struct file *mig_file(struct mig_dev *md, int flags, bool save)
{
	struct mig_file *mf = kzalloc(sizeof(*mf), GFP_KERNEL);
	struct file *f;

	if (!mf)
		return ERR_PTR(-ENOMEM);
	mf->md = md;
	if (save) {
		memcpy(mf->buf, md->regs, STATE_BYTES);
		mf->len = STATE_BYTES;
	}
	f = anon_inode_getfile("vtrace_mig", &mig_fops, mf, flags);
	if (IS_ERR(f)) {
		kfree(mf);
		return f;
	}
	f->f_mode |= FMODE_PREAD | FMODE_PWRITE;
	return f;
}

/* One arc of the FSM (include/uapi/linux/vfio.h, "The FSM"): a data fd for
 * the arcs that start a transfer, NULL for the others. */
static struct file *mig_step(struct mig_dev *md, enum vfio_device_mig_state next)
{
	enum vfio_device_mig_state cur = md->state;
	struct file *f;

	if (cur == VFIO_DEVICE_STATE_STOP && next == VFIO_DEVICE_STATE_STOP_COPY)
		return mig_file(md, O_RDONLY, true);
	if (cur == VFIO_DEVICE_STATE_STOP && next == VFIO_DEVICE_STATE_RESUMING) {
		f = mig_file(md, O_WRONLY, false);
		if (!IS_ERR(f))
			resuming = get_file(f);
		return f;
	}
	if (cur == VFIO_DEVICE_STATE_RESUMING && next == VFIO_DEVICE_STATE_STOP) {
		struct mig_file *mf = resuming->private_data;
		int bad = mf->len != STATE_BYTES;

		if (!bad)
			memcpy(md->regs, mf->buf, STATE_BYTES);
		fput(resuming);
		resuming = NULL;
		return bad ? ERR_PTR(-EINVAL) : NULL;
	}
	return NULL;	/* RUNNING <-> STOP, STOP_COPY -> STOP: nothing to move */
}

static struct file *mig_set_state(struct vfio_device *vdev, enum vfio_device_mig_state new)
{
	struct mig_dev *md = container_of(vdev, struct mig_dev, vdev);
	enum vfio_device_mig_state next;
	struct file *res = NULL;
	int ret;

	mutex_lock(&md->lock);
	while (md->state != new) {
		ret = vfio_mig_get_next_state(vdev, md->state, new, &next);
		if (ret) {
			res = ERR_PTR(ret);
			break;
		}
		res = mig_step(md, next);
		if (IS_ERR(res))
			break;
		md->state = next;
		/* only the last arc may hand out a data fd (the core returns it) */
		if (WARN_ON(res && new != next)) {
			fput(res);
			res = ERR_PTR(-EINVAL);
			break;
		}
	}
	mutex_unlock(&md->lock);
	return res;
}

static int mig_get_state(struct vfio_device *vdev, enum vfio_device_mig_state *state)
{
	struct mig_dev *md = container_of(vdev, struct mig_dev, vdev);

	mutex_lock(&md->lock);
	*state = md->state;
	mutex_unlock(&md->lock);
	return 0;
}

static const struct vfio_migration_ops mig_ops = {
	.migration_set_state = mig_set_state,
	.migration_get_state = mig_get_state,
};

/* A user that closes the device leaves it running again, as drivers reset
 * their migration state on close. */
static void mig_close(struct vfio_device *vdev)
{
	struct mig_dev *md = container_of(vdev, struct mig_dev, vdev);

	mutex_lock(&md->lock);
	md->state = VFIO_DEVICE_STATE_RUNNING;
	if (resuming) {
		fput(resuming);
		resuming = NULL;
	}
	mutex_unlock(&md->lock);
}

static void mig_dma_unmap(struct vfio_device *vdev, u64 iova, u64 length)
{
	/* pins nothing */
}

static void mig_release_dev(struct vfio_device *vdev)
{
	vfio_free_device(vdev);
}

static const struct vfio_device_ops mig_dev_ops = {
	.name = "vtrace-mig",
	.close_device = mig_close,
	.dma_unmap = mig_dma_unmap,
	.release = mig_release_dev,
};

/* The vfio_device's parent must be bound to a driver: opening the device
 * takes a reference on that driver's module (vfio_device_first_open,
 * device->dev->driver->owner), so the module is a platform driver and its
 * own device is what it binds to. */
static int mig_probe(struct platform_device *p)
{
	int i, ret;

	the_dev = vfio_alloc_device(mig_dev, vdev, &p->dev, &mig_dev_ops);
	if (IS_ERR(the_dev))
		return PTR_ERR(the_dev);
	mutex_init(&the_dev->lock);
	the_dev->state = VFIO_DEVICE_STATE_RUNNING;
	for (i = 0; i < STATE_BYTES; i++)
		the_dev->regs[i] = i & 0xff;
	the_dev->vdev.migration_flags = VFIO_MIGRATION_STOP_COPY;
	the_dev->vdev.mig_ops = &mig_ops;
	ret = vfio_register_emulated_iommu_dev(&the_dev->vdev);
	if (ret)
		vfio_put_device(&the_dev->vdev);
	return ret;
}

static int mig_remove(struct platform_device *p)
{
	vfio_unregister_group_dev(&the_dev->vdev);
	vfio_put_device(&the_dev->vdev);
	return 0;
}

static struct platform_driver mig_driver = {
	.probe = mig_probe,
	.remove = mig_remove,
	.driver = {.name = "vtrace_mig"},
};

static int __init mig_init(void)
{
	int ret = platform_driver_register(&mig_driver);

	if (ret)
		return ret;
	pdev = platform_device_register_simple("vtrace_mig", -1, NULL, 0);
	if (IS_ERR(pdev)) {
		platform_driver_unregister(&mig_driver);
		return PTR_ERR(pdev);
	}
	return 0;
}

static void __exit mig_exit(void)
{
	platform_device_unregister(pdev);
	platform_driver_unregister(&mig_driver);
}

module_init(mig_init);
module_exit(mig_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vtrace vmlab: a VFIO device that migrates through the kernel's FSM");
