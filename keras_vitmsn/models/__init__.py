from keras_vitmsn.models.backbone import ViTMSNBackbone
from keras_vitmsn.models.classifier import ViTMSNClassifier
